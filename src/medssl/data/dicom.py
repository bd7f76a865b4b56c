"""DICOM reader (pydicom; pylibjpeg decodes JPEG, JPEG-LS and JPEG 2000): float32 in [0, 1] and the tags as metadata.

MONAI's PydicomReader is not used because it applies only RescaleSlope/Intercept (no VOI LUT, window or
MONOCHROME1 inversion) and returns (W, H) arrays.

Intensity: modality LUT (rescale), then the VOI LUT or window (an explicit `window=(center, width)` replaces the
file's, applied with the DICOM LINEAR function), scaled by the VOI output range; without a window, by the frame's
min/max. MONOCHROME1 is inverted so that bone is bright. Colour (RGB, YBR, palette) -> RGB -> luma.
Frames are (rows, columns) as stored. Every bad input raises ImageReadError whose message starts with the file path.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, get_decoder, pixel_array
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medssl.data._readutil import (PathLike, _check_file, _check_index, _decoding, _fail, _luma, _meta, _minmax,
                                   _text, _to_unit)
from medssl.errors import ImageReadError, MedsslError


def _dcmread(path: Path, header_only: bool, data: bytes | None = None) -> Dataset:
    """Parse a DICOM file (or its bytes, `data`, named `path` in messages); files without the 128-byte preamble and
    'DICM' are accepted if they hold an image."""
    def source():
        return path if data is None else io.BytesIO(data)

    with _decoding(path, "not a readable DICOM file"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(source(), stop_before_pixels=header_only)
        except InvalidDicomError:
            ds = pydicom.dcmread(source(), stop_before_pixels=header_only, force=True)
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


def pseudonym(patient_id: str | None) -> str | None:
    """The patient key medssl keeps for a DICOM's PatientID: "p-" and 16 hex digits of its SHA-256, so images
    still group by patient while the id itself is never logged, printed, returned or written out (manifests,
    splits, reports). Unsalted: the same id gives the same key on every machine, so a short guessable id can be
    found again by trying candidates; treat manifests as pseudonymised, not anonymous."""
    if not patient_id:
        return None
    return "p-" + hashlib.sha256(f"medssl-patient\x00{patient_id}".encode()).hexdigest()[:16]


def _dicom_meta(ds: Dataset) -> dict:
    rows, cols = ds.get("Rows"), ds.get("Columns")
    ts = ds.file_meta.get("TransferSyntaxUID")
    return _meta(
        "dicom", (rows, cols) if rows and cols else None, int(ds.get("NumberOfFrames") or 1),
        patient_id=pseudonym(_text(ds.get("PatientID"))), study_id=_text(ds.get("StudyInstanceUID")),
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
               window: tuple[float, float] | None = None, data: bytes | None = None) -> tuple[np.ndarray, dict]:
    """One frame of a DICOM file (index, default 0) as float32 in [0, 1], with its tags as metadata (patient id
    pseudonymised, no name or birth date). With `data`, the file's bytes are read from memory and `path` only names
    them (an upload is never written to disk)."""
    if window is not None and not (len(window) == 2 and float(window[1]) >= 1):
        raise MedsslError(f"window must be (center, width) with width >= 1, got {window!r}")
    path = _check_file(path) if data is None else Path(path)
    with _decoding(path, "invalid DICOM data"):  # attribute values are parsed lazily and can fail here too
        ds = _dcmread(path, header_only=False, data=data)
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


def read_dicom_header(path: PathLike) -> dict:
    """The tags of a DICOM file as metadata, without decoding pixels."""
    path = _check_file(path)
    with _decoding(path, "invalid DICOM header"):
        ds = _dcmread(path, header_only=True)
        if "Rows" not in ds:
            raise _no_pixels(path, ds)
        return _dicom_meta(ds)
