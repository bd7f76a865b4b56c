"""Checkpoint storage: atomic save, checked load, weights-only init. Imports nothing of medssl above errors.

A checkpoint is one torch file holding the model state (MoCo's queue included: it is a buffer), optimiser,
scheduler, the position in training (step, epoch, next batch of that epoch), every process's RNG states, what the
run records beside them (its resolved config, the model spec, the preprocess), the medssl version and the git
commit. Building a model from it is `medssl.inference.load_bundle`; export writers are in `medssl.export`. It is written to a temporary file in the same folder,
fsynced and renamed over the old one, so a crash or a kill never leaves a partial `last.pt`. Everything in it is
plain data and tensors, so it loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medssl import __version__
from medssl.files import atomic_file
from medssl.errors import MedsslError

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"  # beside last.pt: the best-scoring weights of a run with a Validation


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    """run_dir/checkpoints/last.pt (whether or not it exists)."""
    return Path(run_dir) / CHECKPOINT_DIR / LAST


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file from a run folder or a file path; MedsslError when there is none."""
    path = Path(path)
    if path.is_dir():
        path = last_checkpoint(path)
    if not path.is_file():
        raise MedsslError(f"{path}: no such checkpoint file")
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file beside `path`, fsync, then rename over it: `path` is never partial."""
    with atomic_file(path) as f:
        torch.save(obj, f)
    return Path(path)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source tree medssl runs from, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy and torch RNG states as plain data (loadable with weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what rng_state returned."""
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    """Lists back to tuples (random.setstate wants the exact nesting it gave)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer: Any = None, scheduler: Any = None,
                    step: int = 0, epoch: int = 0, batch: int = 0, rng: list[dict] | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically. (epoch, batch) is where training continues: the next batch to run; extra:
    plain data stored beside (the run's config, model spec, preprocess)."""
    return atomic_save({
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": step, "epoch": epoch, "batch": batch,
        "rng": rng or [rng_state()],
        "version": __version__, "git": git_commit(),
        **dict(extra or {}),
    }, path)


def load_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint on CPU; MedsslError for a missing, truncated, corrupt or foreign file.

    mmap: map the tensors instead of reading them (a quick look at the record beside the weights)."""
    path = resolve_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # zip reader, unpickler and EOF errors all mean the same to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MedsslError(f"{path}: not a readable checkpoint (truncated or corrupt?): {first[:200]}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), Mapping):
        raise MedsslError(f"{path}: not a medssl checkpoint (no model state in it)")
    return ckpt


def load_weights(module: nn.Module, state: Mapping[str, Tensor]) -> dict[str, list[str]]:
    """Copy the tensors whose names and shapes match; report loaded, missing, unexpected and mismatched keys.

    Tolerant on purpose (`--init`): a checkpoint of another method gives its backbone and leaves new heads as built.
    """
    own = module.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(matched, strict=False)
    return {"loaded": sorted(matched), "missing": sorted(set(own) - set(matched)),
            "unexpected": sorted(set(state) - set(own)),
            "mismatched": sorted(k for k in state if k in own and own[k].shape != state[k].shape)}


def drop_checkpoints(run_dir: str | os.PathLike, names: tuple[str, ...] = (LAST, BEST)) -> None:
    """Remove a finished run's checkpoints (and their folder when empty): evaluations keep numbers and log.csv."""
    folder = last_checkpoint(run_dir).parent
    for name in names:
        (folder / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()
