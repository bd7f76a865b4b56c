"""Image .npz reader (numpy): MedMNIST `{train,val,test}_images` / `_labels`, or generic `images` + per-image fields.

Intensity: uint8 / 255, uint16 / 65535; floats already in [0, 1] pass, other arrays use the whole array's min/max.
Colour rows (H, W, 3) -> ITU-R 601 luma unless gray=False. Archives are validated once and cached (keyed by the
resolved path, modification time and size) as read-only arrays; pickled object arrays are refused.
Every bad input raises ImageReadError whose message starts with the file path.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medssl.data._readutil import (PathLike, _check_file, _check_index, _decoding, _fail, _luma, _meta, _minmax,
                                   _named, _text, _to_unit)

_NPZ_SPLITS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class NpzArrays:
    """Validated, read-only arrays of an image .npz, per split ('train'/'val'/'test', or '' for key `images`)."""

    path: Path
    kind: str  # 'medmnist' or 'generic'
    images: dict[str, np.ndarray]  # split -> (N, H, W) or (N, H, W, 3)
    labels: dict[str, np.ndarray]  # split -> (N, 1) binary / multiclass or (N, C) multi-label
    fields: dict[str, np.ndarray] = field(default_factory=dict)  # other per-image arrays (patientid, view, ...)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # split -> value range mapped to [0, 1]

    @property
    def n_images(self) -> int:
        """Images in all splits."""
        return sum(len(a) for a in self.images.values())

    def locate(self, index: int) -> tuple[str, int]:
        """Global row (splits in order) -> (split, row in split)."""
        for split, arr in self.images.items():
            if index < len(arr):
                return split, index
            index -= len(arr)
        raise IndexError(index)


def _image_range(path: Path, key: str, arr: np.ndarray) -> tuple[float, float]:
    """Values mapped to 0 and 1: dtype range for uint8/uint16/bool, else [0, 1] or the array's min/max."""
    if arr.dtype == np.bool_:
        return 0.0, 1.0
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        return 0.0, float(np.iinfo(arr.dtype).max)
    if arr.dtype.kind not in "uif":
        raise _fail(path, f"array {key!r} has dtype {arr.dtype}, not a numeric image type")
    lo, hi = _minmax(path, arr, f"values of array {key!r}") if arr.size else (0.0, 1.0)
    return (0.0, 1.0) if arr.dtype.kind == "f" and lo >= 0 and hi <= 1 else (lo, hi)


def _load_npz_arrays(path: Path) -> dict[str, np.ndarray]:
    with path.open("rb") as f:  # np.load takes any non-zip file for a pickle and says so, which misleads
        if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
            raise _fail(path, "not an .npz file (no zip archive signature)")
    with _decoding(path, "not a readable .npz file"):
        with np.load(path, allow_pickle=False) as z:  # a pickle can run code: never load one
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise _fail(path, "not an .npz archive (a single .npy array?)")
            arrays = {}
            for key in z.files:
                try:
                    arrays[key] = z[key]
                except ValueError as e:
                    if "pickle" not in str(e):
                        raise
                    raise _fail(path, f"array {key!r} is a pickled object array, refused "
                                      f"(keys found: {', '.join(z.files)})") from None
    for arr in arrays.values():
        arr.flags.writeable = False  # shared through the cache: a caller must not change it for the next one
    return arrays


def _split_images(path: Path, arrays: dict[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
    names = [s for s in _NPZ_SPLITS if f"{s}_images" in arrays]
    if names:
        return "medmnist", {s: arrays[f"{s}_images"] for s in names}
    if "images" in arrays:
        return "generic", {"": arrays["images"]}
    raise _fail(path, f"no image array (expected 'train_images', 'val_images', 'test_images' or 'images'); "
                      f"keys found: {', '.join(arrays) or 'none'}")


@functools.lru_cache(maxsize=8)
def _read_npz_cached(resolved: str, mtime_ns: int, size: int) -> NpzArrays:
    path = Path(resolved)
    arrays = _load_npz_arrays(path)
    kind, images = _split_images(path, arrays)
    labels, ranges = {}, {}
    for split, imgs in images.items():
        key = f"{split}_images" if split else "images"
        if imgs.ndim == 4 and imgs.shape[-1] == 1:
            imgs = images[split] = imgs[..., 0]
        if not (imgs.ndim == 3 or (imgs.ndim == 4 and imgs.shape[-1] == 3)):
            raise _fail(path, f"array {key!r} has shape {imgs.shape}; expected (N, H, W) or (N, H, W, 3)")
        ranges[split] = _image_range(path, key, imgs)
        label_key = f"{split}_labels" if split else "labels"
        if label_key in arrays:
            lab = arrays[label_key]
            if len(lab) != len(imgs) or lab.dtype.kind not in "uifb":
                raise _fail(path, f"array {label_key!r} ({lab.shape}, {lab.dtype}) does not give one numeric "
                                  f"label row per image ({len(imgs)} images)")
            labels[split] = lab.reshape(len(lab), -1)
    n = len(images[""]) if kind == "generic" else -1
    fields = {k: v for k, v in arrays.items() if k not in ("images", "labels") and v.ndim == 1 and len(v) == n}
    return NpzArrays(path, kind, images, labels, fields, ranges)


def read_npz(path: PathLike) -> NpzArrays:
    """Load and validate an image .npz (MedMNIST `*_images`/`*_labels` or generic `images` + per-image fields)."""
    path = _check_file(path)
    st, resolved = path.stat(), str(path.resolve())
    with _decoding(path, "invalid .npz content"), _named(path, resolved):
        return _read_npz_cached(resolved, st.st_mtime_ns, st.st_size)


def npz_image(arrays: NpzArrays, split: str, index: int, *, gray: bool = True) -> np.ndarray:
    """Row `index` of a split as float32 in [0, 1]: (H, W), or (H, W, 3) for RGB arrays when gray=False."""
    if split not in arrays.images:
        raise _fail(arrays.path, f"no split {split!r} (splits: {', '.join(repr(s) for s in arrays.images)})")
    imgs = arrays.images[split]
    row = _check_index(arrays.path, index, len(imgs), f"row of split {split!r}" if split else "row")
    out = _to_unit(imgs[row], *arrays.ranges[split])
    return _luma(out) if out.ndim == 3 and gray else out


def read_npz_row(path: PathLike, index: int | None, gray: bool = True) -> tuple[np.ndarray, dict]:
    """Row `index` counted across the splits (train, val, test in that order) with its labels and fields as metadata."""
    arrays = read_npz(path)
    if index is None:
        raise _fail(path, f"an .npz file holds {arrays.n_images} images; pass index (a row counted across "
                          f"splits {', '.join(repr(s) for s in arrays.images)})")
    row_index = _check_index(path, index, arrays.n_images, "row")
    split, row = arrays.locate(row_index)
    arr = npz_image(arrays, split, row, gray=gray)
    extra = {k: (v[row].item() if split == "" else None) for k, v in arrays.fields.items()}
    label = arrays.labels.get(split)
    return arr, _meta("npz", arr.shape, arrays.n_images, kind=arrays.kind, split=split, row=row, index=row_index,
                      bits=8 * arrays.images[split].itemsize, label=None if label is None else label[row].tolist(),
                      patient_id=_text(extra.get("patientid", extra.get("patient_id"))),
                      study_id=_text(extra.get("study_id")), view=_text(extra.get("view")), fields=extra)


def read_npz_header(path: PathLike) -> dict:
    """Metadata of an image .npz: image shape, image count, kind and rows per split."""
    arrays = read_npz(path)
    first = next(iter(arrays.images.values()))
    return _meta("npz", first.shape[1:3], arrays.n_images, kind=arrays.kind,
                 splits={s: len(a) for s, a in arrays.images.items()})
