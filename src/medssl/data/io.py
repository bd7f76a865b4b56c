"""Image readers: one per format, each returning a float32 array in [0, 1] and a metadata dict.

read_image and read_header choose the reader from the suffix, else from the file's magic bytes. This file holds
them and the PNG/JPEG/TIFF (Pillow) and NIfTI (nibabel) readers; DICOM (pydicom) is in dicom.py, MedMNIST-style
.npz in npz.py, and what the readers share in _readutil.py. MONAI's readers are not used because its
PydicomReader applies only RescaleSlope/Intercept (no VOI LUT, window or MONOCHROME1 inversion) and it and
PILReader return (W, H) arrays.

Intensity:
- PNG/JPEG/TIFF: 8-bit / 255, 16-bit / 65535 (never by the image's own maximum); colour -> ITU-R 601 luma.
- NIfTI: one scale per volume, its 0.5 and 99.5 percentiles, clipped; 4D and higher take the first volume.
- DICOM: modality LUT, VOI LUT or window, MONOCHROME1 inverted (see dicom.py). npz: by dtype range (see npz.py).

Orientation: 2D images are (rows, columns) as stored. NIfTI slices are returned as they lie in the voxel array,
with no reorientation and no transpose: slice k along axis 2 is `data[:, :, k]`, so its rows run along voxel axis 0.

Every bad input raises ImageReadError whose message starts with the file path and says what is wrong.
"""

from __future__ import annotations

import functools
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from medssl.data._readutil import (META_KEYS, PathLike, _check_file, _check_index, _decoding, _fail, _luma, _meta,
                                   _minmax, _named, _to_unit)
from medssl.data.dicom import read_dicom, read_dicom_header
from medssl.data.npz import NpzArrays, npz_image, read_npz, read_npz_header, read_npz_row
from medssl.errors import ImageReadError

__all__ = ["IMAGE_SUFFIXES", "META_KEYS", "NpzArrays", "image_format", "npz_image", "read_dicom", "read_header",
           "read_image", "read_image_bytes", "read_nifti", "read_npz", "read_png_jpeg_tiff"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz",
                                   ".npz")
_FORMATS = ("png", "jpeg", "jpeg", "tiff", "tiff", "dicom", "dicom", "nifti", "nifti", "npz")
_SUFFIX_FORMAT = dict(zip(IMAGE_SUFFIXES, _FORMATS))
# DICOM first: a DICOM preamble may itself hold a TIFF header (dual-format files; pydicom's CT_small.dcm is one)
_MAGIC = ((128, b"DICM", "dicom"), (0, b"\x89PNG\r\n\x1a\n", "png"), (0, b"\xff\xd8\xff", "jpeg"),
          (0, b"II*\x00", "tiff"), (0, b"MM\x00*", "tiff"), (0, b"II+\x00", "tiff"), (0, b"MM\x00+", "tiff"),
          (344, b"n+1\x00", "nifti"))
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff"}
_PIL_OPEN = ("PNG", "JPEG", "TIFF")  # MPO (multi-picture JPEG) is opened by the JPEG plugin


# ---------------------------------------------------------------- format detection and dispatch

def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def image_format(path: PathLike) -> str | None:
    """'png'|'jpeg'|'tiff'|'dicom'|'nifti'|'npz' from the suffix, else from the file's magic bytes; None if neither."""
    path = Path(path)
    fmt = _SUFFIX_FORMAT.get(_suffix(path))
    if fmt is not None:
        return fmt
    try:  # DICOM files are often named by UID ('1.2.840.113619.2.5') or have no suffix at all
        with path.open("rb") as f:
            head = f.read(348)
    except OSError:
        return None
    return next((name for at, magic, name in _MAGIC if head[at:at + len(magic)] == magic), None)


def _format_or_fail(path: PathLike) -> tuple[Path, str]:
    path = _check_file(path)
    fmt = image_format(path)
    if fmt is None:
        raise _fail(path, f"unsupported image format (suffix {_suffix(path) or 'none'!r}; "
                          f"expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM file)")
    return path, fmt


def read_image(path: PathLike, index: int | None = None, *, gray: bool = True,
               window: tuple[float, float] | None = None, axis: int = 2) -> tuple[np.ndarray, dict]:
    """Read one 2D image as float32 in [0, 1]: (H, W), or (H, W, 3) for colour sources when gray=False.

    index: DICOM frame (default 0), TIFF page (default 0), NIfTI slice along `axis` (default middle),
    .npz row counted across the splits train, val, test in that order (required). window: DICOM only.
    """
    path, fmt = _format_or_fail(path)
    if fmt == "dicom":
        return read_dicom(path, index, gray=gray, window=window)
    if fmt == "nifti":
        return read_nifti(path, index, axis=axis)
    if fmt == "npz":
        return read_npz_row(path, index, gray)
    return read_png_jpeg_tiff(path, index, gray=gray)


UPLOAD_FORMATS = "DICOM, PNG or JPEG"


def read_image_bytes(data: bytes, name: str = "upload") -> tuple[np.ndarray, dict]:
    """A DICOM, PNG or JPEG file's bytes (an upload) -> (H, W) float32 in [0, 1] and metadata, never touching the
    disk; the format comes from the bytes, not the name. ImageReadError naming `name` for anything else."""
    if not data:
        raise ImageReadError(f"{name}: empty file")
    if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
        return read_png_jpeg_tiff(name, data=data)
    if data[128:132] == b"DICM" or data[:4] in (b"\x08\x00\x05\x00", b"\x08\x00\x08\x00", b"\x08\x00\x16\x00"):
        return read_dicom(name, data=data)
    raise ImageReadError(f"{name}: not a {UPLOAD_FORMATS} image (its first bytes are none of theirs)")


def read_header(path: PathLike) -> dict:
    """Metadata without decoding pixels; `shape` is what read_image returns by default."""
    path, fmt = _format_or_fail(path)
    if fmt == "npz":
        return read_npz_header(path)
    if fmt == "dicom":
        return read_dicom_header(path)
    with _decoding(path, f"invalid {fmt.upper()} header"):
        if fmt == "nifti":
            return _nifti_meta(_load_nifti(path), axis=2, volume=False)
        with Image.open(path, formats=_PIL_OPEN) as img:
            return _pil_meta(img, shape=(img.height, img.width))


# ---------------------------------------------------------------- PNG / JPEG / TIFF

def _pil_array(img: Image.Image) -> tuple[np.ndarray, int, bool]:
    """(array in [0, 1] float32, bits, is_colour); colour arrays are (H, W, 3)."""
    mode = img.mode
    if mode.startswith("I;16"):
        return _to_unit(np.asarray(img), 0, 65535, clip=False), 16, False
    if mode in ("I", "F"):  # 32-bit int or float: 16-bit data stays / 65535, anything else is min-max scaled
        arr = np.asarray(img)
        lo, hi = _minmax(img.filename, arr)
        if mode == "I" and lo >= 0 and hi <= 65535:
            return _to_unit(arr, 0, 65535), 16, False
        if mode == "F" and lo >= 0 and hi <= 1:
            return _to_unit(arr, 0, 1), 32, False
        return _to_unit(arr, lo, hi), 32, False
    if mode in ("1", "L", "LA"):
        arr = np.asarray(img if mode != "LA" else img.getchannel("L"))
        return _to_unit(arr, 0, 1 if mode == "1" else 255, clip=False), 1 if mode == "1" else 8, False
    rgb = np.asarray(img if mode == "RGB" else img.convert("RGB"))  # RGBA, P, CMYK, YCbCr, ... -> RGB
    return _to_unit(rgb, 0, 255, clip=False), 8, True


def _pil_meta(img: Image.Image, **extra: object) -> dict:
    n_images = getattr(img, "n_frames", 1)
    bits = 16 if img.mode.startswith("I;16") else {"1": 1, "I": 32, "F": 32}.get(img.mode, 8)
    return _meta(_PIL_FORMATS.get(img.format or "", "png"), extra.pop("shape"), n_images,
                 bits=bits, photometric=img.mode, **extra)


def read_png_jpeg_tiff(path: PathLike, index: int | None = None, *, gray: bool = True,
                       data: bytes | None = None) -> tuple[np.ndarray, dict]:
    """PNG, JPEG or TIFF via Pillow; index selects the page of a multi-page TIFF (default 0). With `data`, the
    bytes are read from memory and `path` only names them."""
    path = _check_file(path) if data is None else Path(path)
    with _decoding(path, "not a readable PNG/JPEG/TIFF image"), \
            Image.open(path if data is None else BytesIO(data), formats=_PIL_OPEN) as img:
        page = _check_index(path, index, getattr(img, "n_frames", 1), "page")
        if page:
            img.seek(page)
        arr, bits, colour = _pil_array(img)
        if colour and gray:
            arr = _luma(arr)
        meta = _pil_meta(img, shape=arr.shape, index=page)
    meta["bits"] = bits
    return arr, meta


# ---------------------------------------------------------------- NIfTI

def _load_nifti(path: Path) -> nib.Nifti1Image:
    """Header and lazy data proxy; no voxels are read here."""
    with _decoding(path, "not a readable NIfTI file"):
        img = nib.load(path)
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise _fail(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    return img


def _first_volume(img: nib.Nifti1Image) -> tuple[tuple[int, int, int], tuple]:
    """3D shape and the index that selects the first volume (2D images are one-slice volumes)."""
    shape = tuple(img.shape) + (1,) * max(0, 3 - len(img.shape))
    return shape[:3], (0,) * (len(img.shape) - 3)


@functools.lru_cache(maxsize=32)
def _nifti_range(resolved: str, mtime_ns: int, size: int) -> tuple[float, float]:
    """Robust intensity range (0.5 and 99.5 percentiles) of a volume, cached so that per-slice reads stay cheap."""
    volume = _nifti_volume(Path(resolved), _load_nifti(Path(resolved)))
    lo, hi = _minmax(resolved, volume, "voxel values")
    plo, phi = (float(v) for v in np.percentile(volume, [0.5, 99.5]))
    return (plo, phi) if phi > plo else (lo, hi)  # sparse volumes: the percentiles can coincide


def _nifti_volume(path: Path, img: nib.Nifti1Image) -> np.ndarray:
    shape, rest = _first_volume(img)
    with _decoding(path, "cannot read NIfTI voxel data"):
        data = np.asarray(img.dataobj[(...,) + rest] if rest else img.dataobj)
    return data.reshape(shape)


def _nifti_meta(img: nib.Nifti1Image, axis: int, volume: bool, **extra: object) -> dict:
    shape, _ = _first_volume(img)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3]) + (1.0,) * max(0, 3 - len(img.shape))
    kept = [a for a in range(3) if a != axis]
    return _meta("nifti", shape if volume else (shape[kept[0]], shape[kept[1]]), shape[axis],
                 spacing=zooms if volume else (zooms[kept[0]], zooms[kept[1]]),
                 bits=int(img.header["bitpix"]), axis=axis, volume_shape=shape, **extra)


def read_nifti(path: PathLike, index: int | None = None, *, axis: int = 2,
               volume: bool = False) -> tuple[np.ndarray, dict]:
    """Slice `index` along `axis` (None = middle) of a NIfTI volume, or the whole volume when volume=True."""
    path = _check_file(path)
    if axis not in (0, 1, 2):
        raise _fail(path, f"axis {axis} out of range (NIfTI volumes have axes 0, 1, 2)")
    with _decoding(path, "invalid NIfTI data"):
        return _read_nifti(path, index, axis, volume)


def _read_nifti(path: Path, index: int | None, axis: int, volume: bool) -> tuple[np.ndarray, dict]:
    img = _load_nifti(path)
    st, resolved = path.stat(), str(path.resolve())
    with _named(path, resolved):
        lo, hi = _nifti_range(resolved, st.st_mtime_ns, st.st_size)
    shape, rest = _first_volume(img)
    if volume:
        return _to_unit(_nifti_volume(path, img), lo, hi), _nifti_meta(img, axis, True, range=(lo, hi))
    k = shape[axis] // 2 if index is None else _check_index(path, index, shape[axis], "slice")
    where = [slice(None)] * 3
    where[axis] = k
    with _decoding(path, "cannot read NIfTI voxel data"):
        data = img.dataobj[tuple(where[:len(img.shape)]) + rest]
    arr = _to_unit(np.asarray(data).reshape([s for a, s in enumerate(shape) if a != axis]), lo, hi)
    return arr, _nifti_meta(img, axis, False, index=k, range=(lo, hi))
