"""Pieces every image reader shares: error messages, file and index checks, the metadata dict, scaling to [0, 1].

io.py, dicom.py and npz.py import from here and this file imports none of them, so the readers form no cycle.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from medssl.errors import ImageReadError

PathLike = str | os.PathLike
META_KEYS = ("format", "shape", "n_images", "patient_id", "study_id", "view", "modality", "spacing", "bits",
             "photometric")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601


def _fail(path: PathLike, reason: str) -> ImageReadError:
    return ImageReadError(f"{path}: {reason}")


def _check_file(path: PathLike) -> Path:
    """The path as a Path, or ImageReadError when it is missing, not a file or empty."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except OSError as e:
        raise _fail(path, f"cannot access file ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise _fail(path, "not a regular file")
    if st.st_size == 0:
        raise _fail(path, "empty file (0 bytes)")
    return path


@contextmanager
def _decoding(path: PathLike, what: str) -> Iterator[None]:
    """Re-raise any library error as ImageReadError: callers (and the CLI) handle exactly one exception type."""
    try:
        yield
    except ImageReadError:
        raise
    except Exception as e:  # PIL, pydicom, nibabel, zlib, numpy each raise their own types
        detail = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
        raise _fail(path, f"{what} ({detail.replace(':;', ':')[:400]})") from e


@contextmanager
def _named(path: Path, resolved: str) -> Iterator[None]:
    """Errors from the cached readers (keyed by resolved path) name the path the caller gave."""
    try:
        yield
    except ImageReadError as e:
        message = str(e)
        if not message.startswith(resolved + ":"):
            raise
        raise ImageReadError(f"{path}{message[len(resolved):]}") from e.__cause__


def _check_index(path: PathLike, index: int | None, n: int, what: str) -> int:
    """index (None -> 0) checked against n items."""
    if index is None:
        return 0
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise _fail(path, f"{what} index must be an integer, got {index!r}")
    if not 0 <= index < n:
        raise _fail(path, f"{what} {index} out of range ({f'0 to {n - 1}' if n else 'there are none'})")
    return int(index)


def _meta(fmt: str, shape: tuple[int, ...] | None, n_images: int, **extra: object) -> dict:
    """Metadata dict with every key of META_KEYS present (None when unknown)."""
    meta: dict = dict.fromkeys(META_KEYS)
    meta.update(format=fmt, shape=None if shape is None else tuple(int(s) for s in shape), n_images=int(n_images))
    meta.update(extra)
    return meta


def _to_unit(arr: np.ndarray, lo: float, hi: float, clip: bool = True) -> np.ndarray:
    """(arr - lo) / (hi - lo) as a new float32 array, clipped to [0, 1] unless the caller knows it is inside."""
    if not hi > lo:
        return np.zeros(arr.shape, dtype=np.float32)
    if lo == 0:  # one pass; a division, not a reciprocal product, so 255 / 255 is exactly 1.0
        out = np.divide(arr, np.float32(hi), dtype=np.float32)
    else:
        out = np.subtract(arr, lo, dtype=np.float32)
        out /= np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out) if clip else out


def _minmax(path: PathLike, arr: np.ndarray, what: str = "pixel values") -> tuple[float, float]:
    """Data range; NaN or inf (which min/max propagate) is an error."""
    lo, hi = float(arr.min()), float(arr.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise _fail(path, f"{what} include NaN or infinity")
    return lo, hi


def _luma(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) -> (...) float32 grey by ITU-R 601 luma."""
    return np.matmul(rgb[..., :3], _LUMA, dtype=np.float32)


def _text(value: object) -> str | None:
    """A tag or field value as stripped text; None when it is missing or blank."""
    text = str(value).strip() if value is not None else ""
    return text or None

