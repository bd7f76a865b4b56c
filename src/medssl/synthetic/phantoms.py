"""Synthetic chest radiographs: the embedded default data of the demo and the tests.

Each patient has its own anatomy (size, shape, position, exposure, lung texture) and 1-3 studies; each study has a
frontal (PA or AP) and a lateral view, 0-3 findings drawn with a pixel mask each, and a written report.
This file samples patients, studies and findings, exposes the films, adds noise and writes them to disk;
render.py draws anatomy and findings (its docstring gives the coordinates), reports.py writes
the reports.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medssl.data.records import LABEL_SEP, Record, write_manifest
from medssl.synthetic.render import Patient, _Geometry, film_density
from medssl.synthetic.reports import FINDINGS, NO_FINDING, make_report
from medssl.errors import MedsslError

__all__ = ["FINDINGS", "NO_FINDING", "SyntheticStudy", "SyntheticSet", "Patient", "generate", "write_synthetic",
           "make_report", "sample_patient", "render_study", "study_details"]

VIEWS = ("PA", "AP", "LATERAL")
MARKER = "synthetic.json"  # marks a folder written by write_synthetic, so a rerun may overwrite it
_FINDING_P = np.array([0.2, 0.2, 0.15, 0.15, 0.12, 0.18])  # how often each finding is drawn, in FINDINGS order


@dataclass(frozen=True)
class SyntheticStudy:
    """One study (visit): its patient, id, positive findings and report."""

    patient_id: str
    study_id: str
    findings: tuple[str, ...]
    report: str


@dataclass
class SyntheticSet:
    """Images (N, size, size) float32 in [0, 1], masks (N, size, size) uint8 (bit k = FINDINGS[k]), per-image info."""

    images: np.ndarray
    masks: np.ndarray
    patient_id: list[str]
    study_id: list[str]
    view: list[str]
    labels: list[tuple[str, ...]]
    report: list[str]

    def __len__(self) -> int:
        return len(self.patient_id)

    def studies(self) -> list[SyntheticStudy]:
        """One SyntheticStudy per study, in order."""
        seen: dict[str, SyntheticStudy] = {}
        for p, s, lab, r in zip(self.patient_id, self.study_id, self.labels, self.report):
            seen.setdefault(s, SyntheticStudy(p, s, tuple(x for x in lab if x != NO_FINDING), r))
        return list(seen.values())


def sample_patient(rng: np.random.Generator) -> Patient:
    """Draw one patient's anatomy; every value stays in a range where the drawing stays a plausible chest."""
    u = rng.random(17).tolist()  # python floats: numpy float64 scalars would upcast the float32 pixel maths
    dome_r = 0.36 + 0.1 * u[3]
    return Patient(
        seed=int(rng.integers(2**31)), cx=0.05 * (u[0] - 0.5), tw=0.66 + 0.1 * u[1], top=-0.84 + 0.1 * u[2],
        dome=(dome_r, dome_r + 0.03 + 0.05 * u[4]), ctr=0.37 + 0.08 * u[5], hh=0.4 + 0.08 * u[6],
        wall=0.1 + 0.06 * u[7], depth=0.6 + 0.12 * u[8], rib_sp=0.13 + 0.03 * u[9], rib_ph=float(u[10]),
        contrast=1.2 + 0.3 * u[11], offset=-0.08 + 0.08 * u[12], gamma=0.85 + 0.3 * u[13],
        noise=0.008 + 0.017 * u[14], bubble=bool(u[15] < 0.7),
    )


def _draw_geometry(rng: np.random.Generator) -> _Geometry:
    u = rng.random(27).tolist()
    sides = [-1 if t < 0.5 else 1 for t in u[:5]]
    return _Geometry(
        ctr_big=0.56 + 0.08 * u[5], eff=(int(3 * u[6] ** 1.4), 0.1 + 0.22 * u[7]),
        cons=(sides[0], 0.2 + 0.6 * u[8], 0.2 + 0.6 * u[9], 0.2 + 0.55 * u[10], 0.14 + 0.08 * u[11]),
        nod=(sides[1], 0.15 + 0.7 * u[12], 0.2 + 0.6 * u[13], 0.12 + 0.6 * u[14], 0.03 + 0.03 * u[15]),
        ptx=(sides[2], 0.05 + 0.15 * u[16]),
        atel=(sides[3], 0.06 + 0.06 * u[17], 0.6 + 0.2 * u[18], 0.5 * (u[19] - 0.5), 0.022 + 0.015 * u[20]),
        jitter=(0.06 * (u[21] - 0.5), 0.06 * (u[22] - 0.5), 0.97 + 0.06 * u[23]),
        exposure=(0.92 + 0.16 * u[24], 0.05 * (u[25] - 0.5), 0.9 + 0.2 * u[26]), seed=int(rng.integers(2**31)),
    )


def study_details(p: Patient, g: _Geometry, findings: tuple[str, ...]) -> dict[str, dict[str, object]]:
    """Report words (side, size, place) that describe the drawn findings."""
    word = {-1: "right", 1: "left"}
    s, v = g.cons[0], g.cons[3]
    lobe = "upper lobe" if v < 0.4 else ("lower lobe" if v > 0.55 else ("middle lobe" if s < 0 else "lingula"))
    nv, big = g.nod[3], g.ctr_big
    d = {
        "cardiomegaly": {"degree": "mild" if big < 0.59 else ("moderate" if big < 0.62 else "marked")},
        "pleural_effusion": {"side": ("right", "left", "bilateral")[g.eff[0]],
                             "size": "small" if g.eff[1] < 0.16 else ("moderate" if g.eff[1] < 0.25 else "large")},
        "consolidation": {"side": word[s], "lobe": "lingula" if lobe == "lingula" else f"{word[s]} {lobe}"},
        "nodule": {"side": word[g.nod[0]], "zone": "upper" if nv < 0.37 else ("mid" if nv < 0.6 else "lower"),
                   "mm": round(2 * g.nod[4] * 150 / p.tw)},  # the inner thorax is ~30 cm wide
        "pneumothorax": {"side": word[g.ptx[0]], "size": "small" if g.ptx[1] < 0.09 else
                         ("moderate" if g.ptx[1] < 0.14 else "large")},
        "atelectasis": {"side": word[g.atel[0]]},
    }
    return {f: d[f] for f in findings}


def render_study(p: Patient, findings: tuple[str, ...], view: str, size: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One film: image (size, size) float32 in [0, 1] and mask (size, size) uint8, bit k = FINDINGS[k].

    rng first draws the findings' places and the study's jitter, then the noise; so equal seeds give the same study,
    and findings=() with an equal seed gives the same film without them (the tests' finding-free reference).
    """
    if view not in VIEWS or set(findings) - set(FINDINGS):
        raise ValueError(f"view {view!r}, findings {tuple(findings)!r}: expected a view in {VIEWS}, "
                         f"findings from {FINDINGS}")
    g = _draw_geometry(rng)
    noise_rng = np.random.default_rng([int(rng.integers(2**31)), VIEWS.index(view)])
    density, masks = film_density(p, g, tuple(findings), view, size)
    c, b, gm = g.exposure
    flat = 0.88 if view == "AP" else 1.0  # portable AP films are flatter and noisier
    img = np.clip((density - 0.04) * (p.contrast * c * flat) + p.offset + b, 0, 1) ** (p.gamma * gm)
    img += noise_rng.standard_normal((size, size), dtype=np.float32) * (p.noise / flat)
    bits = np.zeros((size, size), dtype=np.uint8)
    for k in range(len(FINDINGS)):
        bits |= masks[k].astype(np.uint8) << k
    return np.clip(img, 0, 1).astype(np.float32), bits


def _check_args(n_patients: int, size: int, seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MedsslError(f"seed must be a whole number >= 0, got {seed!r}")
    if isinstance(n_patients, bool) or not isinstance(n_patients, (int, np.integer)) or n_patients < 1:
        raise MedsslError(f"n_patients must be a whole number >= 1, got {n_patients!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise MedsslError(f"size must be a whole number of pixels >= 16, got {size!r}")


def _sample_findings(rng: np.random.Generator, previous: tuple[str, ...] | None) -> tuple[str, ...]:
    """Findings of one study; a follow-up keeps part of the previous findings half of the time."""
    if previous is not None and rng.random() < 0.5:
        return tuple(f for f in previous if rng.random() < 0.7)
    if rng.random() < 0.4:
        return ()
    k = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    picked = rng.choice(len(FINDINGS), size=k, replace=False, p=_FINDING_P / _FINDING_P.sum())
    return tuple(FINDINGS[i] for i in sorted(picked))


def generate(n_patients: int, size: int = 64, seed: int = 0, *, lateral: bool = True,
             progress: bool = False) -> SyntheticSet:
    """Deterministic for a seed (same seed -> bit-identical arrays and text); patient ids like 'P0001', study ids
    like 'P0001-S1'. Each study gives a frontal (PA/AP) image and, with lateral=True, a lateral one after it."""
    from tqdm import tqdm

    _check_args(n_patients, size, seed)
    images, masks, rows = [], [], []
    seqs = np.random.SeedSequence(seed).spawn(n_patients)  # patient i is the same whatever n_patients is
    for i, seq in enumerate(tqdm(seqs, desc="synthetic patients", disable=not progress, leave=False)):
        rng = np.random.default_rng(seq)
        patient, pid, findings = sample_patient(rng), f"P{i + 1:04d}", None
        for j in range(int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))):
            findings = _sample_findings(rng, findings)
            study_seed, frontal = int(rng.integers(2**63)), "AP" if rng.random() < 0.25 else "PA"
            details = study_details(patient, _draw_geometry(np.random.default_rng(study_seed)), findings)
            report = make_report(findings, rng, details)
            for view in (frontal, "LATERAL") if lateral else (frontal,):
                img, mask = render_study(patient, findings, view, size, np.random.default_rng(study_seed))
                images.append(img)
                masks.append(mask)
                rows.append((pid, f"{pid}-S{j + 1}", view, findings or (NO_FINDING,), report))
    cols = list(zip(*rows))
    return SyntheticSet(np.stack(images), np.stack(masks), list(cols[0]), list(cols[1]), list(cols[2]),
                        list(cols[3]), list(cols[4]))


def _prepare_folder(out: Path) -> None:
    """Refuse a folder with foreign content; clear the files of an earlier synthetic output."""
    if out.exists() and not out.is_dir():
        raise MedsslError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise MedsslError(f"{out}: folder is not empty and is not a synthetic data folder (no {MARKER}); "
                              "choose an empty or new folder")
        for sub in ("images", "masks"):
            for f in (out / sub).glob("*.png"):
                f.unlink()
        (out / "manifest.csv").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def write_synthetic(out_dir: str | os.PathLike, n_patients: int, size: int = 64, seed: int = 0, *,
                    progress: bool = True) -> Path:
    """Write images/<study>_<view>.png (8-bit grey), masks/<same>.png (bit k = FINDINGS[k]) and manifest.csv;
    return the manifest path. Refuses a non-empty folder that is not an earlier synthetic output.

    Every row declares its mask encoding (columns mask_encoding=bits, mask_classes=FINDINGS joined by '|').
    """
    from PIL import Image

    _check_args(n_patients, size, seed)
    out = Path(out_dir)
    _prepare_folder(out)
    (out / MARKER).write_text(json.dumps({"generator": "medssl.synthetic", "n_patients": int(n_patients),
                                          "size": int(size), "seed": int(seed)}) + "\n")
    data = generate(n_patients, size, seed, progress=progress)
    (out / "images").mkdir(exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    records = []
    declared = {"mask_encoding": "bits", "mask_classes": LABEL_SEP.join(FINDINGS)}  # see medssl.data.masks
    for i in range(len(data)):
        name = f"{data.study_id[i]}_{data.view[i]}.png"
        Image.fromarray(np.round(data.images[i] * 255).astype(np.uint8)).save(out / "images" / name)
        Image.fromarray(data.masks[i]).save(out / "masks" / name)
        records.append(Record(path=str(out / "images" / name), patient_id=data.patient_id[i],
                              study_id=data.study_id[i], view=data.view[i], labels=data.labels[i],
                              report=data.report[i], mask=str(out / "masks" / name), extra=dict(declared)))
    return write_manifest(records, out / "manifest.csv")
