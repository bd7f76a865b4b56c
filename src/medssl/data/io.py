"""Image readers: one per format, each returning a float32 array in [0, 1] and a metadata dict.

Formats: PNG/JPEG/TIFF (Pillow), DICOM (pydicom; pylibjpeg decodes JPEG, JPEG-LS and JPEG 2000), NIfTI (nibabel)
and MedMNIST-style .npz (numpy). MONAI's readers are not used because its PydicomReader applies only
RescaleSlope/Intercept (no VOI LUT, window or MONOCHROME1 inversion) and it and PILReader return (W, H) arrays.

Intensity:
- PNG/JPEG/TIFF: 8-bit / 255, 16-bit / 65535 (never by the image's own maximum); colour -> ITU-R 601 luma.
- DICOM: modality LUT (rescale), then the VOI LUT or window (an explicit `window=(center, width)` replaces the
  file's, applied with the DICOM LINEAR function), scaled by the VOI output range; without a window, by the frame's
  min/max. MONOCHROME1 is inverted so that bone is bright. Colour (RGB, YBR, palette) -> RGB -> luma.
- NIfTI: one scale per volume, its 0.5 and 99.5 percentiles, clipped; 4D and higher take the first volume.
- npz: uint8 / 255, uint16 / 65535; floats already in [0, 1] pass, other arrays use the whole array's min/max.

Orientation: 2D images are (rows, columns) as stored. NIfTI slices are returned as they lie in the voxel array,
with no reorientation and no transpose: slice k along axis 2 is `data[:, :, k]`, so its rows run along voxel axis 0.

Every bad input raises ImageReadError whose message starts with the file path and says what is wrong.
"""

from __future__ import annotations

import functools
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, get_decoder, pixel_array
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medssl.errors import ImageReadError, MedsslError

PathLike = str | os.PathLike
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz",
                                   ".npz")
META_KEYS = ("format", "shape", "n_images", "patient_id", "study_id", "view", "modality", "spacing", "bits",
             "photometric")
_FORMATS = ("png", "jpeg", "jpeg", "tiff", "tiff", "dicom", "dicom", "nifti", "nifti", "npz")
_SUFFIX_FORMAT = dict(zip(IMAGE_SUFFIXES, _FORMATS))
# DICOM first: a DICOM preamble may itself hold a TIFF header (dual-format files; pydicom's CT_small.dcm is one)
_MAGIC = ((128, b"DICM", "dicom"), (0, b"\x89PNG\r\n\x1a\n", "png"), (0, b"\xff\xd8\xff", "jpeg"),
          (0, b"II*\x00", "tiff"), (0, b"MM\x00*", "tiff"), (0, b"II+\x00", "tiff"), (0, b"MM\x00+", "tiff"),
          (344, b"n+1\x00", "nifti"))
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff"}
_PIL_OPEN = ("PNG", "JPEG", "TIFF")  # MPO (multi-picture JPEG) is opened by the JPEG plugin
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
_NPZ_SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------- shared helpers

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
        return _read_npz_row(path, index, gray)
    return read_png_jpeg_tiff(path, index, gray=gray)


def read_header(path: PathLike) -> dict:
    """Metadata without decoding pixels; `shape` is what read_image returns by default."""
    path, fmt = _format_or_fail(path)
    if fmt == "npz":
        arrays = read_npz(path)
        first = next(iter(arrays.images.values()))
        return _meta("npz", first.shape[1:3], arrays.n_images, kind=arrays.kind,
                     splits={s: len(a) for s, a in arrays.images.items()})
    with _decoding(path, f"invalid {fmt.upper()} header"):
        if fmt == "dicom":
            ds = _dcmread(path, header_only=True)
            if "Rows" not in ds:
                raise _no_pixels(path, ds)
            return _dicom_meta(ds)
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


def read_png_jpeg_tiff(path: PathLike, index: int | None = None, *, gray: bool = True) -> tuple[np.ndarray, dict]:
    """PNG, JPEG or TIFF via Pillow; index selects the page of a multi-page TIFF (default 0)."""
    path = _check_file(path)
    with _decoding(path, "not a readable PNG/JPEG/TIFF image"), Image.open(path, formats=_PIL_OPEN) as img:
        page = _check_index(path, index, getattr(img, "n_frames", 1), "page")
        if page:
            img.seek(page)
        arr, bits, colour = _pil_array(img)
        if colour and gray:
            arr = _luma(arr)
        meta = _pil_meta(img, shape=arr.shape, index=page)
    meta["bits"] = bits
    return arr, meta


# ---------------------------------------------------------------- DICOM

def _text(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _dcmread(path: Path, header_only: bool) -> Dataset:
    """Parse a DICOM file; files without the 128-byte preamble and 'DICM' are accepted if they hold an image."""
    with _decoding(path, "not a readable DICOM file"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=header_only)
        except InvalidDicomError:
            ds = pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
            if "Rows" not in ds and "SOPClassUID" not in ds:
                raise _fail(path, "not a DICOM file (no 'DICM' marker at byte 128 and no image attributes)") from None
            caught.clear()  # forced parsing warns about every guess it makes; the check above is what counts
    for w in caught:  # a file that ends early is only a warning, and pydicom may then return an empty dataset
        if "end of file" in str(w.message).lower():
            raise _fail(path, f"truncated DICOM file ({str(w.message).replace(f' in file {path}', '')})")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if "TransferSyntaxUID" not in ds.file_meta:  # raw datasets: the decoder needs the encoding the parser found
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    """Row, column spacing in mm from PixelSpacing, ImagerPixelSpacing or the shared functional groups; 0 = unknown."""
    sources = [ds]
    if "SharedFunctionalGroupsSequence" in ds:
        sources += [item for g in ds.SharedFunctionalGroupsSequence for item in g.get("PixelMeasuresSequence", [])]
    for source in sources:
        for key in ("PixelSpacing", "ImagerPixelSpacing"):
            value = source.get(key)
            try:
                row, col = (float(v) for v in value)
            except (TypeError, ValueError):
                continue
            if row > 0 and col > 0:
                return row, col
    return None


def _dicom_meta(ds: Dataset) -> dict:
    rows, cols = ds.get("Rows"), ds.get("Columns")
    ts = ds.file_meta.get("TransferSyntaxUID")
    return _meta(
        "dicom", (rows, cols) if rows and cols else None, int(ds.get("NumberOfFrames") or 1),
        patient_id=_text(ds.get("PatientID")), study_id=_text(ds.get("StudyInstanceUID")),
        view=_text(ds.get("ViewPosition")), modality=_text(ds.get("Modality")), spacing=_spacing(ds),
        bits=ds.get("BitsStored"), photometric=_text(ds.get("PhotometricInterpretation")),
        series_id=_text(ds.get("SeriesInstanceUID")), transfer_syntax=ts.name if ts else None,
        color=int(ds.get("SamplesPerPixel") or 1) > 1 or ds.get("PhotometricInterpretation") == "PALETTE COLOR",
    )


def _no_pixels(path: Path, ds: Dataset) -> ImageReadError:
    if "Rows" in ds and "Columns" in ds:
        return _fail(path, f"header describes a {ds.Rows}x{ds.Columns} image but the file has no pixel data "
                           "(truncated file?)")
    modality = _text(ds.get("Modality"))
    what = [x for x in (getattr(ds.get("SOPClassUID"), "name", None), modality and f"modality {modality}") if x]
    return _fail(path, "no pixel data in this DICOM file" + (f" ({', '.join(what)})" if what else ""))


def _dicom_pixels(path: Path, ds: Dataset, frame: int) -> np.ndarray:
    """Decode one frame, with the reason for failure (truncation, missing decoder, corrupt stream) in the message."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise _no_pixels(path, ds)
    if "Rows" not in ds or "Columns" not in ds:
        raise _fail(path, "pixel data without the Rows and Columns that give its shape")
    ts = ds.file_meta.TransferSyntaxUID
    with _decoding(path, f"cannot decode {ts.name} pixel data"):
        if "PixelData" in ds and not ts.is_encapsulated:
            expected, found = get_expected_length(ds, "bytes"), len(ds.PixelData)
            if found < expected:
                raise _fail(path, f"truncated DICOM pixel data (expected {expected} bytes, found {found})")
        decoder = get_decoder(ts)
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies) or "no plugin"
            raise _fail(path, f"no decoder installed for {ts.name} pixel data (missing: {missing}); "
                              "install pylibjpeg with pylibjpeg-libjpeg and pylibjpeg-openjpeg")
        # pixel_array converts YBR_FULL/YBR_FULL_422 to RGB itself, and decodes only the frame asked for
        return pixel_array(ds, index=frame)


def _window_range(ds: Dataset) -> tuple[float, float]:
    """Output range of pydicom's apply_windowing for this dataset (mirrors its rules: PS3.3 C.11.2.1.2)."""
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, 2.0 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
    elif ds.get("PixelRepresentation", 0) == 0:
        lo, hi = 0.0, 2.0 ** ds.BitsStored - 1
    else:
        lo, hi = -(2.0 ** (ds.BitsStored - 1)), 2.0 ** (ds.BitsStored - 1) - 1
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = lo * slope + intercept, hi * slope + intercept
    return min(lo, hi), max(lo, hi)


def _voi_kind(ds: Dataset) -> str | None:
    """'lut' or 'window' as pydicom's apply_voi_lut would choose (the LUT wins), None when there is neither."""
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return None


def _dicom_grey(path: Path, ds: Dataset, raw: np.ndarray, window: tuple[float, float] | None) -> tuple[np.ndarray, str]:
    """Modality LUT -> VOI LUT or window -> [0, 1] -> MONOCHROME1 inversion. Returns (image, VOI: lut|window|minmax)."""
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise _fail(path, "pixel values include NaN or infinity")
    with _decoding(path, "invalid modality LUT"):
        values = apply_modality_lut(raw, ds)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
        ds.VOILUTFunction = "LINEAR"  # the same numbers in the file's tags would give the same image
        kind = "window"
    else:
        kind = _voi_kind(ds)
    out = None
    try:
        if kind == "lut":
            out = _to_unit(apply_voi(values, ds), 0, 2.0 ** ds.VOILUTSequence[0].LUTDescriptor[2] - 1)
        elif kind == "window":
            out = _to_unit(apply_windowing(values, ds), *_window_range(ds))
    except (ValueError, TypeError, AttributeError, IndexError, NotImplementedError) as e:
        if window is not None:
            raise _fail(path, f"cannot apply window {tuple(window)} ({e})") from e
        kind = None  # a malformed VOI in the file (e.g. width 0): fall back to the data range
    if out is None:
        kind = "minmax"
        out = _to_unit(values, *_minmax(path, values))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # low values are white: invert to MONOCHROME2
        np.subtract(1.0, out, out=out)
    return out, kind


def _dicom_colour(path: Path, ds: Dataset, raw: np.ndarray) -> np.ndarray:
    """RGB (YBR already converted by pydicom) or palette colour -> (H, W, 3) float32 in [0, 1]."""
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        with _decoding(path, "invalid palette colour lookup table"):
            rgb = apply_color_lut(raw, ds)
            bits = ds.RedPaletteColorLookupTableDescriptor[2]
    else:
        rgb, bits = raw, int(ds.get("BitsStored") or 8)
    return _to_unit(rgb, 0, 2.0 ** bits - 1)


def read_dicom(path: PathLike, index: int | None = None, *, gray: bool = True,
               window: tuple[float, float] | None = None) -> tuple[np.ndarray, dict]:
    """One frame of a DICOM file (index, default 0) as float32 in [0, 1], with its tags as metadata."""
    if window is not None and not (len(window) == 2 and float(window[1]) >= 1):
        raise MedsslError(f"window must be (center, width) with width >= 1, got {window!r}")
    path = _check_file(path)
    with _decoding(path, "invalid DICOM data"):  # attribute values are parsed lazily and can fail here too
        ds = _dcmread(path, header_only=False)
        meta = _dicom_meta(ds)
        frame = _check_index(path, index, meta["n_images"], "frame")
        raw = _dicom_pixels(path, ds, frame)
        if meta["color"]:
            arr, voi = _dicom_colour(path, ds, raw), None
            if gray:
                arr = _luma(arr)
        else:
            arr, voi = _dicom_grey(path, ds, raw, window)
        meta.update(shape=arr.shape, index=frame, voi=voi)
        if voi == "window":  # the window used: the first one when the file offers several
            meta["window"] = tuple(float(v if ds[k].VM == 1 else v[0]) for k, v in
                                   (("WindowCenter", ds.WindowCenter), ("WindowWidth", ds.WindowWidth)))
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


# ---------------------------------------------------------------- npz (MedMNIST and generic)

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


def _read_npz_row(path: Path, index: int | None, gray: bool) -> tuple[np.ndarray, dict]:
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
