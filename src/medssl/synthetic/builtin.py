"""THE default data source: what every command reads when it is given no --data.

One function, one set of defaults: `builtin_source(folder)` writes the built-in synthetic chest radiographs into
folder (once: an existing copy with the same parameters is reused) with patient-level train / val / test splits
in its manifest, and returns the manifest. Pretraining then reads the train split only and evaluation scores on
val / test patients that pretraining never saw.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from medssl.data.records import read_manifest, write_manifest
from medssl.data.splits import assign_splits
from medssl.synthetic.phantoms import MARKER, write_synthetic

BUILTIN_PATIENTS = 200
BUILTIN_SEED = 0
BUILTIN_SIZE = 64
BUILTIN_SPLITS = (0.7, 0.1, 0.2)


def builtin_source(folder: str | os.PathLike, *, size: int = BUILTIN_SIZE, patients: int = BUILTIN_PATIENTS,
                   seed: int = BUILTIN_SEED, progress: bool = True) -> Path:
    """Write (or reuse) the built-in synthetic set in folder; return its manifest.csv (with a split column)."""
    folder = Path(folder)
    manifest = folder / "manifest.csv"
    wanted = {"n_patients": int(patients), "size": int(size), "seed": int(seed), "splits": list(BUILTIN_SPLITS)}
    marker = folder / MARKER
    if manifest.is_file() and marker.is_file():
        try:
            if json.loads(marker.read_text()).get("builtin") == wanted:
                return manifest
        except (OSError, ValueError):
            pass
    write_synthetic(folder, patients, size, seed, progress=progress)
    write_manifest(assign_splits(read_manifest(manifest), BUILTIN_SPLITS, seed), manifest)
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps({**info, "builtin": wanted}) + "\n")
    return manifest


def describe(patients: int = BUILTIN_PATIENTS, size: int = BUILTIN_SIZE, seed: int = BUILTIN_SEED) -> str:
    """How commands name this source in their output."""
    return f"built-in synthetic chest radiographs ({patients} patients, {size} px, seed {seed})"
