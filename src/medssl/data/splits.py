"""Patient-level splits and label fractions: stratified, seeded, nested, and guarded against leakage.

Every draw orders patients by a hash of (seed, patient_id), never by the order of the records, so the same
seed gives the same patients whatever the file order and whichever method asks: numbers from two methods
evaluated at "10 % of labels" are computed on the very same images.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from medssl.data.records import SPLITS, Record
from medssl.errors import LeakageError, MedsslError


def _patient_order_key(seed: int, patient_id: str) -> str:
    """Stable pseudo-random rank of a patient for a seed (sha1, not Python's salted hash())."""
    return hashlib.sha1(f"{seed}\x00{patient_id}".encode()).hexdigest()


def group_by_patient(records: Sequence[Record]) -> dict[str, list[Record]]:
    """patient_id -> that patient's records, in input order."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.patient_id].append(r)
    return dict(groups)


def patient_strata(groups: Mapping[str, Sequence[Record]]) -> dict[str, str]:
    """patient_id -> stratum: the patient's rarest label over the whole set ('' when unlabelled).

    Multi-label patients cannot be stratified on every label at once; stratifying on the rarest label keeps each
    rare finding present in every part, which is what matters for per-class AUC.
    """
    freq = Counter(n for recs in groups.values() for n in {n for r in recs for n in r.labels})
    strata = {}
    for pid, recs in groups.items():
        names = {n for r in recs for n in r.labels}
        strata[pid] = min(names, key=lambda n: (freq[n], n)) if names else ""
    return strata


def _ordered_strata(records: Sequence[Record], seed: int, stratify: bool) -> dict[str, list[str]]:
    """stratum -> its patient ids in seeded order."""
    groups = group_by_patient(records)
    strata = patient_strata(groups) if stratify else {pid: "" for pid in groups}
    out: dict[str, list[str]] = defaultdict(list)
    for pid in sorted(groups, key=lambda p: _patient_order_key(seed, p)):
        out[strata[pid]].append(pid)
    return dict(out)


def _check_fractions(fractions: Sequence[float]) -> None:
    if not fractions or any(not (0 <= f <= 1) for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise MedsslError(f"split fractions {list(fractions)} must be in [0, 1] and sum to 1")


def split_by_patient(
    records: Sequence[Record], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0, stratify: bool = True
) -> list[list[Record]]:
    """Split so that no patient appears in two parts; every record lands in exactly one part.

    Within each stratum the patients, in seeded order, are cut at the cumulative fractions, so each part holds
    about its share of every stratum.
    """
    _check_fractions(fractions)
    groups = group_by_patient(records)
    parts: list[list[Record]] = [[] for _ in fractions]
    cum = [sum(fractions[: i + 1]) for i in range(len(fractions))]
    for pids in _ordered_strata(records, seed, stratify).values():
        n = len(pids)
        bounds = [0] + [round(c * n) for c in cum]
        for i in range(len(fractions)):
            for pid in pids[bounds[i] : bounds[i + 1]]:
                parts[i].extend(groups[pid])
    assert_no_patient_overlap(*parts)
    return parts


def assign_splits(
    records: Sequence[Record], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0, stratify: bool = True
) -> list[Record]:
    """Records with their `split` set to train/val/test by a patient-level split, in input order."""
    if len(fractions) != 3:
        raise MedsslError(f"need three split fractions (train, val, test), got {list(fractions)}")
    parts = split_by_patient(records, fractions, seed, stratify)
    split_of = {r.key: name for name, part in zip(SPLITS, parts) for r in part}
    return [r.with_split(split_of[r.key]) for r in records]


def label_fraction(
    records: Sequence[Record], fraction: float, seed: int = 0, stratify: bool = True
) -> list[Record]:
    """A patient-level, stratified subset holding about `fraction` of the patients, in input order.

    Nested: for one seed, the subset at a smaller fraction lies inside the subset at a larger one (both are prefixes
    of the same seeded order within each stratum). Every stratum keeps at least one patient, so a 1 % draw still
    contains each class.
    """
    if not (0 < fraction <= 1):
        raise MedsslError(f"label fraction {fraction} must be in (0, 1]")
    keep: set[str] = set()
    for pids in _ordered_strata(records, seed, stratify).values():
        keep.update(pids[: max(1, round(fraction * len(pids)))])
    return [r for r in records if r.patient_id in keep]


def assert_no_patient_overlap(*parts: Sequence[Record], names: Sequence[str] | None = None) -> None:
    """Raise LeakageError naming the first patient found in two parts."""
    names = list(names) if names else [f"part {i}" for i in range(len(parts))]
    owner: dict[str, int] = {}
    for i, part in enumerate(parts):
        for pid in {r.patient_id for r in part}:
            if pid in owner and owner[pid] != i:
                raise LeakageError(f"patient {pid!r} appears in both {names[owner[pid]]} and {names[i]}")
            owner[pid] = i


def by_split(records: Sequence[Record]) -> dict[str, list[Record]]:
    """split name -> records, checking that no patient crosses splits."""
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for r in records:
        out.setdefault(r.split or "", []).append(r)
    named = [s for s in SPLITS if out[s]]
    assert_no_patient_overlap(*(out[s] for s in named), names=named)
    return out
