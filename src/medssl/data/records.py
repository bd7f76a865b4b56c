"""Record (one 2D image with its patient, study, view, labels and report) and manifest.csv reading and writing.

A manifest is a CSV with one row per image. Columns:

| column     | required | meaning                                                                      |
|------------|----------|------------------------------------------------------------------------------|
| path       | yes      | image file, relative to the manifest's folder or absolute                    |
| patient_id | yes      | splits are drawn per patient, never per image                                |
| study_id   | no       | one imaging study (frontal + lateral of one visit); MICLe can pair within it |
| view       | no       | PA, AP, LATERAL, ...                                                         |
| labels     | no       | positive class names separated by '|' ("cardiomegaly|effusion"); empty = none |
| report     | no       | free-text report of the study                                                |
| split      | no       | train, val or test                                                           |
| index      | no       | frame, slice or row inside a multi-image file (DICOM frames, NIfTI, .npz)    |
| mask       | no       | mask file: PNG label image, 0/255 PNG or NIfTI labels (see data/masks.py; columns mask_encoding, mask_classes) |

Other columns are allowed and ignored, unless one looks like a misspelling of a known column.
"""

from __future__ import annotations

import csv
import difflib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from medssl.errors import ManifestError

COLUMNS = ("path", "patient_id", "study_id", "view", "labels", "report", "split", "index", "mask")
REQUIRED = ("path", "patient_id")
SPLITS = ("train", "val", "test")
LABEL_SEP = "|"
_NUMBER = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+[eE][+-]?\d+|\d+\.\d*[eE][+-]?\d+|nan|inf|infinity)$", re.IGNORECASE)


@dataclass(frozen=True)
class Record:
    """One 2D image: where its pixels are and what is known about it."""

    path: str
    patient_id: str
    study_id: str = ""
    view: str = ""
    labels: tuple[str, ...] = ()
    report: str = ""
    split: str = ""
    index: int | None = None  # frame / slice / row inside a multi-image file
    mask: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> tuple[str, int | None]:
        """What makes a record unique: the file and the position inside it."""
        return (self.path, self.index)

    def with_split(self, split: str) -> "Record":
        """A copy with another split."""
        return replace(self, split=split)


def parse_labels(text: str, where: str = "labels") -> tuple[str, ...]:
    """'a|b' -> ('a', 'b'). Class names are words or integers; a float, NaN or inf is the wrong type."""
    names = tuple(s.strip() for s in text.split(LABEL_SEP) if s.strip())
    for name in names:
        if _NUMBER.match(name):
            raise ManifestError(
                f"{where}: label {name!r} is a number that is not a whole class index; "
                f"expected class names (or integer class ids) separated by '{LABEL_SEP}'"
            )
    if len(set(names)) != len(names):
        raise ManifestError(f"{where}: label list {text!r} names a class twice")
    return names


def _check_columns(header: Sequence[str], path: Path) -> None:
    """Missing required columns, and extra columns that look like misspelt known ones, are errors."""
    present = set(header)
    for col in header:
        if col in COLUMNS:
            continue
        close = difflib.get_close_matches(col.lower().replace(" ", "_"), COLUMNS, n=1, cutoff=0.75)
        if close and close[0] not in present:
            raise ManifestError(f"{path}: column {col!r} looks like a misspelling of {close[0]!r}")
    missing = [c for c in REQUIRED if c not in present]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(repr(m) for m in missing)}; found {list(header)}")
    dupes = sorted({c for c in header if list(header).count(c) > 1})
    if dupes:
        raise ManifestError(f"{path}: column(s) {dupes} appear twice")


def _parse_row(row: dict[str, str], line: int, path: Path, root: Path) -> Record:
    where = f"{path} line {line}"
    if not (row.get("path") or "").strip():
        raise ManifestError(f"{where}: empty 'path'")
    if not (row.get("patient_id") or "").strip():
        raise ManifestError(f"{where}: empty 'patient_id'")
    split = (row.get("split") or "").strip()
    if split and split not in SPLITS:
        raise ManifestError(f"{where}: split {split!r} is not one of {SPLITS}")
    index_text = (row.get("index") or "").strip()
    index = None
    if index_text:
        if not index_text.isdigit():
            raise ManifestError(f"{where}: index {index_text!r} is not a whole number >= 0")
        index = int(index_text)
    p = row["path"].strip()
    mask = (row.get("mask") or "").strip()
    return Record(
        path=p if os.path.isabs(p) else str(root / p),
        patient_id=row["patient_id"].strip(),
        study_id=(row.get("study_id") or "").strip(),
        view=(row.get("view") or "").strip(),
        labels=parse_labels(row.get("labels") or "", f"{where} column 'labels'"),
        report=(row.get("report") or "").strip(),
        split=split,
        index=index,
        mask=(mask if os.path.isabs(mask) else str(root / mask)) if mask else "",
        extra={k: v for k, v in row.items() if k not in COLUMNS and k is not None},
    )


def read_manifest(path: str | os.PathLike) -> list[Record]:
    """Read manifest.csv; relative paths are taken from the manifest's folder. Raises ManifestError on bad content."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise ManifestError(f"{path}: empty manifest (no header line)")
            header = [h.strip() for h in reader.fieldnames]
            _check_columns(header, path)
            reader.fieldnames = header
            records = []
            for line, row in enumerate(reader, start=2):
                if None in row:
                    raise ManifestError(f"{path} line {line}: more fields than the header has columns")
                records.append(_parse_row(row, line, path, path.parent))
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not a UTF-8 text CSV ({e.reason})") from None
    except csv.Error as e:
        raise ManifestError(f"{path}: malformed CSV ({e})") from None
    if not records:
        raise ManifestError(f"{path}: manifest has a header but no rows")
    check_unique(records, str(path))
    return records


def check_unique(records: Iterable[Record], where: str) -> None:
    """Raise when two records point at the same image (same path and index)."""
    seen: dict[tuple[str, int | None], int] = {}
    for i, r in enumerate(records):
        if r.key in seen:
            at = f"{r.path}" + (f" [index {r.index}]" if r.index is not None else "")
            raise ManifestError(f"{where}: duplicate path {at} (rows {seen[r.key] + 1} and {i + 1})")
        seen[r.key] = i


def _rel(p: str, root: Path) -> str:
    if not p:
        return ""
    try:
        return Path(os.path.relpath(p, root)).as_posix() if Path(p).resolve().is_relative_to(root.resolve()) else p
    except ValueError:  # another drive on Windows
        return p


def write_manifest(records: Sequence[Record], path: str | os.PathLike) -> Path:
    """Write records to a manifest CSV (atomically); paths under its folder are stored relative to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra_cols = sorted({k for r in records for k in r.extra})
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(list(COLUMNS) + extra_cols)
        for r in records:
            w.writerow(
                [_rel(r.path, path.parent), r.patient_id, r.study_id, r.view, LABEL_SEP.join(r.labels), r.report,
                 r.split, "" if r.index is None else r.index, _rel(r.mask, path.parent)]
                + [r.extra.get(k, "") for k in extra_cols]
            )
    os.replace(tmp, path)
    return path


def label_names(records: Iterable[Record]) -> list[str]:
    """Sorted class names that occur in the records (integer ids sort numerically)."""
    names = {n for r in records for n in r.labels}
    return sorted(names, key=lambda n: (0, int(n), "") if n.isdigit() else (1, 0, n))

