"""Turn any data source into records: a manifest CSV, a folder (PNG/JPEG/TIFF, DICOM, NIfTI), a MedMNIST-style
.npz, or a single image file. Also `index_folder`, behind `medssl data index`.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medssl.data import io
from medssl.data.records import LABEL_SEP, Record, check_unique, parse_labels, read_manifest
from medssl.errors import ManifestError, MedsslError

MANIFEST = "manifest.csv"
NPZ_SPLITS = ("train", "val", "test")
# MedMNIST v2 class names (Yang et al. 2023), by file-name prefix; other .npz files get integer class ids.
MEDMNIST_LABELS: dict[str, tuple[str, ...]] = {
    "pneumoniamnist": ("normal", "pneumonia"),
    "breastmnist": ("malignant", "normal_or_benign"),
    "chestmnist": ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
                   "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural_thickening", "hernia"),
    "dermamnist": ("actinic_keratosis", "basal_cell_carcinoma", "benign_keratosis", "dermatofibroma", "melanoma",
                   "melanocytic_nevus", "vascular_lesion"),
    "bloodmnist": ("basophil", "eosinophil", "erythroblast", "immature_granulocyte", "lymphocyte", "monocyte",
                   "neutrophil", "platelet"),
}
MULTI_LABEL = {"chestmnist"}
NO_FINDING = "no_finding"

BadFiles = list[tuple[str, str]]


def _label_names(stem: str, n_classes: int) -> tuple[str, ...]:
    for prefix, names in MEDMNIST_LABELS.items():
        if stem.lower().startswith(prefix) and len(names) >= n_classes:
            return names
    return tuple(str(i) for i in range(n_classes))


def _row_labels(row: np.ndarray, names: tuple[str, ...], multi: bool, where: str) -> tuple[str, ...]:
    if multi:
        pos = tuple(names[j] for j in np.flatnonzero(row))
        return pos or (NO_FINDING,)
    k = int(row[0])
    if not 0 <= k < len(names):
        raise ManifestError(f"{where}: label {k} outside 0..{len(names) - 1}")
    return (names[k],)


def npz_records(path: str | os.PathLike) -> list[Record]:
    """Records for a MedMNIST .npz (official splits kept) or a generic one (images + optional per-image fields).

    `index` is the row in the concatenation of the file's splits (train, val, test), so records can be re-split.
    MedMNIST has no patient ids: each image is its own patient, and patient-level equals image-level there.
    """
    path = Path(path)
    arrays = io.read_npz(path)
    records: list[Record] = []
    offset = 0
    stem = path.name.split(".")[0].split("_")[0]
    for split, images in arrays.images.items():
        n = len(images)
        labels = arrays.labels.get(split)
        names: tuple[str, ...] = ()
        multi = False
        if labels is not None:
            labels = labels.reshape(n, -1)
            multi = labels.shape[1] > 1 or stem.lower() in MULTI_LABEL
            names = _label_names(stem, labels.shape[1] if multi else int(labels.max()) + 1)
        f = arrays.fields
        for i in range(n):
            pid = str(f["patientid"][i]) if "patientid" in f else str(f["patient_id"][i]) if "patient_id" in f else ""
            records.append(Record(
                path=str(path),
                patient_id=pid or f"{stem}-{split or 'img'}-{i:05d}",
                study_id=str(f["study_id"][i]) if "study_id" in f else "",
                view=str(f["view"][i]) if "view" in f else "",
                labels=(_row_labels(labels[i], names, multi, f"{path} {split} row {i}") if labels is not None
                        else _field_labels(f, i, path)),
                report=_field_report(f, i),
                split=split if split in NPZ_SPLITS else "",
                index=offset + i,
            ))
        offset += n
    return records


def _field_labels(fields: dict[str, np.ndarray], i: int, path: Path) -> tuple[str, ...]:
    for key in ("labels", "finding", "label"):
        if key in fields:
            text = str(fields[key][i]).replace(LABEL_SEP, "/") if key == "finding" else str(fields[key][i])
            return parse_labels(text, f"{path} field {key!r} row {i}")
    return ()


def _field_report(fields: dict[str, np.ndarray], i: int) -> str:
    for key in ("report", "clinical_notes", "findings"):
        if key in fields:
            return str(fields[key][i]).strip()
    return ""


def npz_row(record: Record) -> tuple[str, int]:
    """(array split key, row within it) of an .npz record's global index."""
    arrays = io.read_npz(record.path)
    i = int(record.index or 0)
    for split, images in arrays.images.items():
        if i < len(images):
            return split, i
        i -= len(images)
    raise MedsslError(f"{record.path}: index {record.index} is past the last image")


def read_record_image(record: Record) -> np.ndarray:
    """The record's pixels as a float32 (H, W) array in [0, 1]."""
    if io.image_format(record.path) == "npz":
        split, row = npz_row(record)
        return io.npz_image(io.read_npz(record.path), split, row)
    return io.read_image(record.path, record.index)[0]


def _read_side_csv(path: Path) -> dict[str, dict[str, str]]:
    """A user CSV keyed by 'path' or 'filename' giving patient_id/study_id/view/labels/report per image."""
    if not path.is_file():
        raise ManifestError(f"{path}: no such CSV file")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        key = "path" if "path" in cols else "filename" if "filename" in cols else None
        if key is None:
            raise ManifestError(f"{path}: needs a 'path' or 'filename' column to match images; found {cols}")
        reader.fieldnames = cols
        return {Path(row[key].strip()).as_posix(): row for row in reader}


def _side_row(side: dict[str, dict[str, str]], rel: str) -> dict[str, str] | None:
    return side.get(rel) or side.get(Path(rel).name)


def _records_for_file(path: Path, rel: str, header: dict, labels_from_folders: bool,
                      side: dict[str, dict[str, str]]) -> list[Record]:
    row = _side_row(side, rel) or {}
    pid = (row.get("patient_id") or "").strip() or header.get("patient_id") or ""
    labels = parse_labels(row.get("labels") or "", f"labels of {rel}") if row.get("labels") else ()
    if not labels and labels_from_folders and "/" in rel:
        labels = parse_labels(rel.split("/")[-2], f"folder name of {rel}")
    n = int(header.get("n_images") or 1)
    indices: Sequence[int | None] = range(n) if n > 1 else [None]
    return [Record(
        path=str(path),
        patient_id=pid or rel,  # no id anywhere: the image is its own patient
        study_id=(row.get("study_id") or "").strip() or header.get("study_id") or "",
        view=(row.get("view") or "").strip() or header.get("view") or "",
        labels=labels,
        report=(row.get("report") or "").strip(),
        index=k,
    ) for k in indices]


def index_folder(
    root: str | os.PathLike, *, skip_bad: bool = False, patients_csv: str | os.PathLike | None = None,
    labels_from_folders: bool = False, verify: bool = True, progress: bool = True,
) -> tuple[list[Record], BadFiles]:
    """Walk a folder and make one record per 2D image (per frame / slice of multi-image files).

    Patient, study and view come from DICOM tags, else from `patients_csv`; an image with neither is its own
    patient. With verify, every image is decoded once so a corrupt file is caught here, not mid-training.
    """
    root = Path(root)
    if not root.is_dir():
        raise MedsslError(f"{root}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST
                   and io.image_format(p) not in (None, "npz"))
    if not files:
        raise MedsslError(f"{root}: no images found (looked for {', '.join(io.IMAGE_SUFFIXES)} and DICOM files)")
    side = _read_side_csv(Path(patients_csv)) if patients_csv else {}
    records: list[Record] = []
    bad: BadFiles = []
    for path in tqdm(files, desc="indexing", unit="file", disable=not progress, file=sys.stderr):
        rel = path.relative_to(root).as_posix()
        try:
            header = io.read_header(path)
            if verify:
                io.read_image(path, 0 if int(header.get("n_images") or 1) > 1 else None)
        except MedsslError as e:
            if not skip_bad:
                raise
            bad.append((str(path), str(e)))
            continue
        records.extend(_records_for_file(path, rel, header, labels_from_folders, side))
    if not records:
        raise MedsslError(f"{root}: none of the {len(files)} image files could be read")
    return records, bad


def load_source(source: str | os.PathLike, *, skip_bad: bool = False, progress: bool = True) -> tuple[list[Record], BadFiles]:
    """Records of a manifest CSV, a folder (its manifest.csv if present), an .npz, or one image file."""
    path = Path(source)
    if not path.exists():
        raise MedsslError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return read_manifest(path / MANIFEST), []
        return index_folder(path, skip_bad=skip_bad, progress=progress)
    if path.suffix.lower() == ".csv":
        return read_manifest(path), []
    fmt = io.image_format(path)
    if fmt == "npz":
        records = npz_records(path)
        check_unique(records, str(path))
        return records, []
    if fmt is None:
        raise MedsslError(f"{path}: not a data source (expected a manifest .csv, a folder, an .npz or an image file)")
    header = io.read_header(path)
    io.read_image(path, 0 if int(header.get("n_images") or 1) > 1 else None)
    return _records_for_file(path, path.name, header, False, {}), []


def check_images(records: Sequence[Record], *, skip_bad: bool, progress: bool = True,
                 reader: Callable[[Record], np.ndarray] = read_record_image) -> tuple[list[Record], BadFiles]:
    """Decode every record's image once; keep the readable ones (skip_bad) or raise on the first bad one."""
    good, bad = [], []
    for r in tqdm(records, desc="checking images", unit="img", disable=not progress, file=sys.stderr):
        try:
            reader(r)
            good.append(r)
        except MedsslError as e:
            if not skip_bad:
                raise
            bad.append((r.path, str(e)))
    return good, bad


def with_text_column(records: list[Record], column: str, source: str | os.PathLike) -> list[Record]:
    """The records with their report taken from another text column: a manifest column, or a per-image field of a
    generic .npz (data.text_column / align --text-column); MedsslError naming the source and the column."""
    if column == "report":
        return records
    out = []
    for r in records:
        if column in r.extra:
            text = r.extra[column]
        elif io.image_format(r.path) == "npz":
            fields = io.read_npz(r.path).fields
            if column not in fields:
                raise MedsslError(f"{r.path}: no per-image field {column!r} for data.text_column (fields: "
                                  f"{', '.join(sorted(fields)) or 'none'})")
            text = str(fields[column][npz_row(r)[1]])
        else:
            raise MedsslError(f"{source}: no column {column!r} for data.text_column")
        out.append(replace(r, report=text))
    return out
