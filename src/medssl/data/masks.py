"""Segmentation masks: how a mask file encodes its classes (MaskSpec), and reading masks as (K, S, S) {0, 1}.

Encodings (`MaskSpec.encoding`), each read from the file's stored integers, never intensity-scaled:
- "label": 0 is background, value k in 1..K is classes[k - 1] (one class per pixel).
- "binary": one class; any nonzero value (0 / 255 or 0 / 1) is that class.
- "bits": bit k set = classes[k] (classes may overlap; the synthetic phantoms' encoding).

Mask files are PNG (1-bit, 8- or 16-bit grey, or palette indices; colour is refused) or NIfTI label volumes
(.nii / .nii.gz). A NIfTI mask is sliced like its image (see io.read_nifti): slice `record.index` along voxel
axis 2, the middle slice when the record has no index; 4D volumes give their first volume.

Where the spec comes from (`mask_spec`): the options, else the manifest columns `mask_encoding` and
`mask_classes` ('|'-separated), else a look at the first masks (only 0 / 1 or 0 / 255: "binary", one class
named "foreground").
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from medssl.data import io
from medssl.data._readutil import _check_index, _decoding
from medssl.data.records import Record, parse_labels
from medssl.errors import MedsslError

ENCODINGS = ("label", "binary", "bits")
BINARY_CLASS = "foreground"
MAX_BITS = 32  # "bits" classes a mask can hold (a 16-bit PNG holds 16, an int32 NIfTI 31 more)
_GREY_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")  # P: palette indices, as VOC-style label PNGs store
_PEEK = 8  # masks looked at (until one is not empty) to tell a binary mask without a declared encoding
_ASK = "pass --mask-encoding label|binary|bits (and --mask-classes a,b,...) or add a 'mask_encoding' column"


@dataclass(frozen=True)
class MaskSpec:
    """How the mask files of a data set encode `classes`: encoding is one of ENCODINGS."""

    encoding: str
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise MedsslError(f"mask encoding {self.encoding!r} is not one of {', '.join(ENCODINGS)}")
        names = self.classes
        if not names or any(not isinstance(c, str) or not c.strip() for c in names) or len(set(names)) != len(names):
            raise MedsslError(f"mask classes {list(names)}: need one or more distinct, non-empty names")
        if self.encoding == "binary" and len(names) != 1:
            raise MedsslError(f"mask encoding 'binary' holds one class, got {len(names)} ({', '.join(names)}); "
                              "use 'label' or 'bits' for several")
        if self.encoding == "bits" and len(names) > MAX_BITS:
            raise MedsslError(f"mask encoding 'bits' holds at most {MAX_BITS} classes, got {len(names)}")


# ---------------------------------------------------------------- reading one mask's stored values

def _mask_path(record: Record) -> Path:
    """The record's mask file; MedsslError naming the image when there is none."""
    if not record.mask:
        raise MedsslError(f"{record.path}: no mask (empty 'mask' column); segmentation needs one for every image")
    path = Path(record.mask)
    if not path.is_file():
        raise MedsslError(f"{path}: mask file not found (mask of {record.path})")
    return path


def _png_values(path: Path) -> np.ndarray:
    """(H, W) int64 stored values of a grey or palette PNG; colour is refused."""
    with _decoding(path, "not a readable PNG mask"), Image.open(path, formats=["PNG"]) as img:
        mode, bands = img.mode, len(img.getbands())
        values = np.asarray(img).astype(np.int64) if mode in _GREY_MODES else None
    if values is None:
        raise MedsslError(f"{path}: mask has {bands} channels (mode {mode}); masks must be single-channel grey "
                          "PNGs whose values are classes (8- or 16-bit, e.g. Pillow mode L or I;16), not colour")
    return values


@functools.lru_cache(maxsize=4)
def _nifti_volume(resolved: str, mtime_ns: int, size: int) -> np.ndarray:
    """(X, Y, Z) first volume of a NIfTI file as stored (scl_slope applied if set), cached: read once, not per slice."""
    img = nib.load(resolved)
    shape = tuple(img.shape) + (1,) * max(0, 3 - len(img.shape))
    rest = (0,) * max(0, len(img.shape) - 3)                    # 4D and higher: the first volume
    return np.asarray(img.dataobj[(...,) + rest] if rest else img.dataobj).reshape(shape[:3])


def _nifti_values(path: Path, index: int | None) -> tuple[np.ndarray, int]:
    """(H, W) int64 label values of slice `index` along axis 2 (None: the middle one), and that slice."""
    st = path.stat()
    with _decoding(path, "not a readable NIfTI mask"):
        volume = _nifti_volume(str(path.resolve()), st.st_mtime_ns, st.st_size)
    k = volume.shape[2] // 2 if index is None else _check_index(path, index, volume.shape[2], "slice")
    data = volume[:, :, k]                                       # (H, W), as io.read_nifti slices the image
    if not np.issubdtype(data.dtype, np.integer):
        whole = np.isfinite(data) & (data == np.round(data))
        if not whole.all():
            raise MedsslError(f"{path} slice {k}: mask value {float(data[~whole].flat[0])} is not a whole number")
    return data.astype(np.int64), k


def _mask_values(record: Record) -> tuple[np.ndarray, str]:
    """(H, W) int64 stored values of the record's mask, and how to name it in errors (file, slice, image)."""
    path = _mask_path(record)
    fmt = io.image_format(path)
    if fmt == "png":
        return _png_values(path), f"{path} (mask of {record.path})"
    if fmt == "nifti":
        values, k = _nifti_values(path, record.index)
        return values, f"{path} slice {k} (mask of {record.path})"
    raise MedsslError(f"{path}: mask format {fmt or 'unknown'!r} is not supported; masks are PNG or NIfTI "
                      f"(.nii, .nii.gz) files (mask of {record.path})")


# ---------------------------------------------------------------- values -> classes

def _decode_bits(values: np.ndarray, n_classes: int) -> np.ndarray:
    """(..., H, W) integers, bit k = class k -> (..., K, H, W) uint8 {0, 1}."""
    return ((values[..., None, :, :] >> np.arange(n_classes)[:, None, None]) & 1).astype(np.uint8)


def decode_mask(values: np.ndarray, spec: MaskSpec, where: str = "mask") -> np.ndarray:
    """(..., H, W) stored integers -> (..., K, H, W) uint8 {0, 1} under spec; bad values: MedsslError naming where."""
    values, k = np.asarray(values).astype(np.int64), len(spec.classes)
    if spec.encoding == "binary":
        return (values != 0)[..., None, :, :].astype(np.uint8)
    limit = k if spec.encoding == "label" else 2**k - 1
    bad = values[(values < 0) | (values > limit)]
    if bad.size:
        what = f"labels 0..{k}" if spec.encoding == "label" else f"bit values 0..{limit} ({k} bits)"
        raise MedsslError(f"{where}: mask value {int(bad.flat[0])} is outside {what} for the {k} class(es) "
                          f"{', '.join(spec.classes)} (encoding {spec.encoding!r})")
    if spec.encoding == "bits":
        return _decode_bits(values, k)
    return (values[..., None, :, :] == np.arange(1, k + 1)[:, None, None]).astype(np.uint8)


def resize_nearest(masks: np.ndarray, size: int) -> np.ndarray:
    """(..., H, W) -> (..., size, size) by nearest neighbour: output row i is input row floor((i + 0.5) * H / size)."""
    h, w = masks.shape[-2:]
    rows = np.minimum(((np.arange(size) + 0.5) * h / size).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * w / size).astype(np.int64), w - 1)
    return masks[..., rows[:, None], cols[None, :]]


def read_mask(record: Record, spec: MaskSpec, size: int) -> np.ndarray:
    """The record's mask as (K, size, size) uint8 {0, 1}, K = len(spec.classes), nearest-neighbour resized."""
    values, where = _mask_values(record)
    return resize_nearest(decode_mask(values, spec, where), size)


def read_masks(records: Sequence[Record], spec: MaskSpec, size: int) -> Tensor:
    """(N, K, size, size) uint8 {0, 1} from the records' mask files."""
    out = torch.empty(len(records), len(spec.classes), size, size, dtype=torch.uint8)
    for i, record in enumerate(records):
        out[i] = torch.from_numpy(read_mask(record, spec, size))
    return out


# ---------------------------------------------------------------- where the spec comes from

def _column(records: Sequence[Record], name: str) -> str | None:
    """The one value of a manifest column across the records; None when absent or empty in all of them."""
    values = {r.extra.get(name, "").strip() for r in records}
    if values == {""}:
        return None
    if len(values) > 1:
        shown = ", ".join(repr(v) for v in sorted(values)[:4])
        raise MedsslError(f"{records[0].path}: column {name!r} must hold one value for every row, found {shown}")
    return values.pop()


def _classes(records: Sequence[Record], classes: Sequence[str] | None) -> tuple[str, ...] | None:
    if classes is not None:
        names = tuple(c.strip() for c in classes)
        if not names or not all(names) or len(set(names)) != len(names):
            raise MedsslError(f"--mask-classes {','.join(classes)}: need one or more distinct, non-empty names")
        return names
    text = _column(records, "mask_classes")
    return None if text is None else parse_labels(text, f"{records[0].path}: column 'mask_classes'")


def _guess_encoding(records: Sequence[Record], classes: tuple[str, ...] | None) -> str:
    """'binary' when the first non-empty of the first masks holds only 0 / 1 or 0 / 255 (and one class is asked)."""
    if classes is not None and len(classes) > 1:
        raise MedsslError(f"{records[0].path}: {len(classes)} mask classes but no mask encoding; {_ASK}")
    seen: set[int] = set()
    where = records[0].mask or records[0].path
    for record in records[:_PEEK]:
        values, where = _mask_values(record)
        seen |= {int(v) for v in np.unique(values)}
        if seen - {0}:
            break
    if seen <= {0, 1} or seen <= {0, 255}:
        return "binary"
    shown = ", ".join(str(v) for v in sorted(seen)[:8]) + (", ..." if len(seen) > 8 else "")
    raise MedsslError(f"{where}: mask values {shown} are not a 0/1 or 0/255 binary mask, so the encoding is "
                      f"unknown; {_ASK}")


def mask_spec(records: Sequence[Record], encoding: str | None = None,
              classes: Sequence[str] | None = None) -> MaskSpec:
    """The MaskSpec of a data set: options first, then the manifest columns, then a look at the first masks."""
    if not records:
        raise MedsslError("no records: segmentation needs images with masks")
    if encoding is not None and encoding not in ENCODINGS:
        raise MedsslError(f"--mask-encoding {encoding!r}: must be one of {', '.join(ENCODINGS)}")
    names = _classes(records, classes)
    if encoding is None:
        encoding = _column(records, "mask_encoding")
        if encoding is not None and encoding not in ENCODINGS:
            raise MedsslError(f"{records[0].path}: column 'mask_encoding' {encoding!r} is not one of "
                              f"{', '.join(ENCODINGS)}")
    encoding = encoding or _guess_encoding(records, names)
    if names is None:
        if encoding != "binary":
            raise MedsslError(f"{records[0].path}: mask encoding {encoding!r} needs class names; pass "
                              "--mask-classes a,b,... or add a 'mask_classes' column ('|'-separated)")
        names = (BINARY_CLASS,)
    return MaskSpec(encoding, names)
