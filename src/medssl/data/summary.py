"""What is in a data source: counts, patients, studies, views, label balance per split, image sizes, reports."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from statistics import median

from tqdm import tqdm

from medssl.data import io
from medssl.data.records import Record, label_names
from medssl.data.sources import BadFiles
from medssl.data.splits import group_by_patient
from medssl.errors import MedsslError


def image_sizes(records: Sequence[Record], limit: int = 2000, progress: bool = True) -> tuple[Counter, Counter, BadFiles]:
    """(H x W counts, format counts, unreadable files) from the headers of up to `limit` distinct files."""
    sizes: Counter = Counter()
    formats: Counter = Counter()
    bad: BadFiles = []
    paths = list(dict.fromkeys(r.path for r in records))
    for path in tqdm(paths[:limit], desc="reading headers", unit="file", disable=not progress or len(paths) < 200,
                     file=sys.stderr):
        try:
            fmt = io.image_format(path)
            if fmt == "npz":
                arrays = io.read_npz(path)
                for split, imgs in arrays.images.items():
                    sizes[f"{imgs.shape[1]}x{imgs.shape[2]}"] += len(imgs)
                formats["npz"] += sum(len(v) for v in arrays.images.values())
                continue
            header = io.read_header(path)
            shape = header.get("shape") or ()
            sizes["x".join(str(s) for s in shape[:2]) or "?"] += 1
            formats[fmt or "?"] += 1
        except MedsslError as e:
            bad.append((path, str(e)))
    return sizes, formats, bad


def summarize(records: Sequence[Record], *, progress: bool = True, header_limit: int = 2000) -> dict:
    """A JSON-ready summary of the records (reads image headers, never the pixels)."""
    patients = group_by_patient(records)
    per_patient = [len(v) for v in patients.values()]
    studies = {(r.patient_id, r.study_id) for r in records if r.study_id}
    splits = Counter(r.split or "unsplit" for r in records)
    classes = label_names(records)
    balance = {
        split: {name: sum(name in r.labels for r in records if (r.split or "unsplit") == split) for name in classes}
        for split in splits
    }
    sizes, formats, bad = image_sizes(records, header_limit, progress)
    reports = [r.report for r in records if r.report]
    return {
        "images": len(records),
        "patients": len(patients),
        "studies": len(studies),
        "images_per_patient": {"min": min(per_patient), "median": median(per_patient), "max": max(per_patient)},
        "patients_with_2plus_images": sum(n >= 2 for n in per_patient),
        "views": dict(Counter(r.view or "unknown" for r in records).most_common()),
        "splits": dict(splits),
        "classes": classes,
        "multi_label": any(len(r.labels) > 1 for r in records),
        "label_counts": balance,
        "unlabelled": sum(not r.labels for r in records),
        "image_sizes": dict(sizes.most_common(10)),
        "formats": dict(formats),
        "headers_read": min(len({r.path for r in records}), header_limit),
        "reports": {"present": len(reports), "mean_words": round(sum(len(t.split()) for t in reports) / len(reports), 1)
                    if reports else 0},
        "masks": sum(bool(r.mask) for r in records),
        "unreadable": [{"path": p, "error": e} for p, e in bad],
    }


def format_summary(s: dict, title: str) -> str:
    """The summary as a few aligned lines for the terminal."""
    ipp = s["images_per_patient"]
    lines = [
        f"{title}",
        f"  images    {s['images']:,}   patients {s['patients']:,}   studies {s['studies']:,}   "
        f"images/patient min {ipp['min']} median {ipp['median']:g} max {ipp['max']}   "
        f"patients with 2+ images {s['patients_with_2plus_images']:,}",
        f"  views     " + ", ".join(f"{k} {v:,}" for k, v in s["views"].items()),
        f"  splits    " + ", ".join(f"{k} {v:,}" for k, v in s["splits"].items()),
        f"  sizes     " + ", ".join(f"{k} ({v:,})" for k, v in s["image_sizes"].items())
        + f"   formats " + ", ".join(f"{k} {v:,}" for k, v in s["formats"].items()),
        f"  reports   {s['reports']['present']:,} present, {s['reports']['mean_words']} words on average;"
        f" masks {s['masks']:,}",
    ]
    if s["classes"]:
        kind = "multi-label" if s["multi_label"] else "single-label"
        lines.append(f"  labels    {len(s['classes'])} classes ({kind}), unlabelled images {s['unlabelled']:,}")
        width = max(len(c) for c in s["classes"])
        splits = list(s["label_counts"])
        lines.append("    " + " " * width + "".join(f"{sp:>10}" for sp in splits))
        for c in s["classes"]:
            lines.append(f"    {c:<{width}}" + "".join(f"{s['label_counts'][sp][c]:>10,}" for sp in splits))
    if s["unreadable"]:
        lines.append(f"  UNREADABLE {len(s['unreadable'])} file(s): " + "; ".join(b["path"] for b in s["unreadable"][:5]))
    return "\n".join(lines)

