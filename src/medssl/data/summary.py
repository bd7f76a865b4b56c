"""What is in a data source: counts, patients, studies, views, label balance per split, image sizes, modalities,
reports. Sizes, formats and modalities count images (a 181-slice NIfTI volume is 181 images), from file headers."""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import median

from tqdm import tqdm

from medssl.data import io
from medssl.data.records import Record, label_names
from medssl.data.sources import BadFiles
from medssl.data.splits import group_by_patient
from medssl.errors import MedsslError

SIZES_SHOWN = 10  # the terminal lists this many sizes and says how many more there are


@dataclass
class HeaderCounts:
    """Images per size ('HxW'), format and modality, from the headers of the files read; the files that failed."""

    sizes: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    modalities: Counter = field(default_factory=Counter)
    bad: BadFiles = field(default_factory=list)
    files_read: int = 0  # distinct files whose header was tried
    images: int = 0  # records in the files read without error


def _npz_counts(path: str, recs: list[Record], counts: HeaderCounts) -> None:
    arrays = io.read_npz(path)
    sizes: Counter = Counter()  # added to counts only when every record of the file is found
    for r in recs:
        try:
            split, _ = arrays.locate(int(r.index or 0))
        except IndexError:
            raise MedsslError(f"{path}: index {r.index} is past the last of its {arrays.n_images} images") from None
        shape = arrays.images[split].shape
        sizes[f"{shape[1]}x{shape[2]}"] += 1
    counts.sizes.update(sizes)
    counts.formats["npz"] += len(recs)
    counts.modalities["unknown"] += len(recs)


def image_sizes(records: Sequence[Record], limit: int = 2000, progress: bool = True) -> HeaderCounts:
    """Sizes, formats and modalities of the records in up to `limit` distinct files, from their headers."""
    by_path: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_path[r.path].append(r)
    counts = HeaderCounts()
    paths = list(by_path)[:limit]
    counts.files_read = len(paths)
    for path in tqdm(paths, desc="reading headers", unit="file", disable=not progress or len(paths) < 200,
                     file=sys.stderr):
        recs = by_path[path]
        try:
            if io.image_format(path) == "npz":
                _npz_counts(path, recs, counts)
            else:
                header = io.read_header(path)
                shape = header.get("shape") or ()
                counts.sizes["x".join(str(s) for s in shape[:2]) or "?"] += len(recs)
                counts.formats[header.get("format") or "?"] += len(recs)
                counts.modalities[header.get("modality") or "unknown"] += len(recs)
        except MedsslError as e:
            counts.bad.append((path, str(e)))
            continue
        counts.images += len(recs)
    return counts


def _ordered(counter: Counter, last: str = "unknown") -> dict[str, int]:
    """Most common first (ties by name), `last` at the end."""
    items = sorted(((k, v) for k, v in counter.items() if k != last), key=lambda kv: (-kv[1], kv[0]))
    return dict(items + ([(last, counter[last])] if counter.get(last) else []))


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
    headers = image_sizes(records, header_limit, progress)
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
        "image_sizes": _ordered(headers.sizes, "?"),  # every size; the terminal shows the first SIZES_SHOWN
        "formats": _ordered(headers.formats, "?"),
        "modalities": _ordered(headers.modalities),
        "files": len({r.path for r in records}),
        "headers_read": headers.files_read,
        "images_with_header": headers.images,
        "reports": {"present": len(reports), "mean_words": round(sum(len(t.split()) for t in reports) / len(reports), 1)
                    if reports else 0},
        "masks": sum(bool(r.mask) for r in records),
        "unreadable": [{"path": p, "error": e} for p, e in headers.bad],
    }


def _sizes_line(s: dict) -> str:
    sizes = list(s["image_sizes"].items())
    text = ", ".join(f"{k} ({v:,})" for k, v in sizes[:SIZES_SHOWN])
    if len(sizes) > SIZES_SHOWN:
        rest = sizes[SIZES_SHOWN:]
        text += f", and {len(rest):,} more sizes ({sum(v for _, v in rest):,} images)"
    if s["headers_read"] < s["files"]:
        text += (f"   [from the headers of {s['headers_read']:,} of {s['files']:,} files "
                 f"({s['images_with_header']:,} images)]")
    return f"  sizes     {text}"


def format_summary(s: dict, title: str) -> str:
    """The summary as a few aligned lines for the terminal."""
    ipp = s["images_per_patient"]
    kinds = f"  formats   " + ", ".join(f"{k} {v:,}" for k, v in s["formats"].items())
    if any(k != "unknown" for k in s["modalities"]):  # PNG, NIfTI and .npz headers hold no modality
        kinds += f"   modality " + ", ".join(f"{k} {v:,}" for k, v in s["modalities"].items())
    lines = [
        f"{title}",
        f"  images    {s['images']:,}   patients {s['patients']:,}   studies {s['studies']:,}   "
        f"images/patient min {ipp['min']} median {ipp['median']:g} max {ipp['max']}   "
        f"patients with 2+ images {s['patients_with_2plus_images']:,}",
        f"  views     " + ", ".join(f"{k} {v:,}" for k, v in s["views"].items()),
        f"  splits    " + ", ".join(f"{k} {v:,}" for k, v in s["splits"].items()),
        _sizes_line(s),
        kinds,
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

