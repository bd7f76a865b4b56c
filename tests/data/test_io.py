"""Readers in medssl.data.io, checked against values computed independently from the same files.

Sample files come from packages, located by path (pydicom.data.get_testdata_file would try to download the ones
pydicom does not ship): pydicom's own test files, the pydicom-data package and nibabel's test data.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import JPEG2000Lossless

from medssl.data import dicom, io
from medssl.data.dicom import pseudonym
from medssl.data.io import (META_KEYS, NpzArrays, image_format, npz_image, read_dicom, read_header, read_image,
                            read_nifti, read_npz, read_png_jpeg_tiff)
from medssl.errors import ImageReadError

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
try:
    import data_store

    PYDICOM_DATA: Path | None = Path(data_store.__file__).parent / "data"
except ImportError:
    PYDICOM_DATA = None
needs_pydicom_data = pytest.mark.skipif(PYDICOM_DATA is None, reason="pydicom-data (module data_store) not installed")


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window, normalised to [0, 1]."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def minmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (x - x.min()) / (x.max() - x.min())


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


# ---------------------------------------------------------------- format detection

@pytest.mark.parametrize("name, fmt", [
    ("a.png", "png"), ("a.JPG", "jpeg"), ("a.jpeg", "jpeg"), ("a.tif", "tiff"), ("a.TIFF", "tiff"),
    ("a.dcm", "dicom"), ("a.dicom", "dicom"), ("a.nii", "nifti"), ("a.nii.gz", "nifti"), ("a.npz", "npz"),
    ("a.bmp", None), ("a.txt", None), ("a.gz", None), ("missing", None),
])
def test_image_format_from_suffix(tmp_path, name, fmt):
    assert image_format(tmp_path / name) == fmt


def test_image_format_from_content(tmp_path):
    for name in ("IM0001", "1.2.840.113619.2.5"):  # DICOM files named without suffix or by UID
        shutil.copy(PYDICOM_FILES / "CT_small.dcm", tmp_path / name)
        assert image_format(tmp_path / name) == "dicom"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "noext", format="PNG")
    assert image_format(tmp_path / "noext") == "png"
    (tmp_path / "notes").write_text("not an image")
    assert image_format(tmp_path / "notes") is None


def test_extensionless_dicom_reads_like_the_original(tmp_path):
    shutil.copy(PYDICOM_FILES / "CT_small.dcm", tmp_path / "IM0001")
    a, meta = read_image(tmp_path / "IM0001")
    b, _ = read_image(PYDICOM_FILES / "CT_small.dcm")
    np.testing.assert_array_equal(a, b)
    assert meta["format"] == "dicom"


# ---------------------------------------------------------------- DICOM

def test_ct_small_is_rescaled_then_min_max_scaled():
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    arr, meta = read_image(PYDICOM_FILES / "CT_small.dcm")
    assert arr.dtype == np.float32 and arr.shape == (128, 128)
    np.testing.assert_allclose(arr, minmax(hu), atol=1e-5)
    assert meta["modality"] == "CT" and meta["patient_id"] == pseudonym("1CT1") and "1CT1" not in str(meta)
    assert meta["study_id"] == ds.StudyInstanceUID
    assert meta["spacing"] == pytest.approx((0.661468, 0.661468))
    assert (meta["n_images"], meta["bits"], meta["photometric"], meta["voi"]) == (1, 16, "MONOCHROME2", "minmax")
    assert set(META_KEYS) <= set(meta)


def test_mr_small_applies_the_file_window():
    ds = pydicom.dcmread(PYDICOM_FILES / "MR_small.dcm")
    arr, meta = read_dicom(PYDICOM_FILES / "MR_small.dcm")
    np.testing.assert_allclose(arr, linear_window(ds.pixel_array, 600, 1600), atol=1e-5)
    assert meta["voi"] == "window" and meta["window"] == (600.0, 1600.0)


def test_explicit_window_equal_to_the_files_gives_the_same_image_and_a_narrow_one_saturates_more():
    path = PYDICOM_FILES / "MR_small.dcm"
    default, _ = read_dicom(path)
    same, _ = read_dicom(path, window=(600, 1600))
    np.testing.assert_allclose(same, default, atol=1e-6)
    narrow, meta = read_image(path, window=(600, 100))
    assert np.sum((narrow == 0) | (narrow == 1)) > np.sum((default == 0) | (default == 1)) + 100
    assert meta["window"] == (600.0, 100.0)
    ds = pydicom.dcmread(path)
    np.testing.assert_allclose(narrow, linear_window(ds.pixel_array, 600, 100), atol=1e-5)


def test_window_override_on_a_file_without_window():
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    arr, _ = read_dicom(PYDICOM_FILES / "CT_small.dcm", window=(40, 400))  # soft-tissue window in HU
    np.testing.assert_allclose(arr, linear_window(hu, 40, 400), atol=1e-5)


def test_invalid_window_argument():
    with pytest.raises(ValueError, match="width"):
        read_dicom(PYDICOM_FILES / "MR_small.dcm", window=(600, 0))


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"])
def test_lossless_compressed_mr_equals_uncompressed(name):
    expected, _ = read_dicom(PYDICOM_FILES / "MR_small.dcm")
    arr, meta = read_dicom(PYDICOM_FILES / name)
    np.testing.assert_array_equal(arr, expected)
    assert meta["transfer_syntax"] != "Explicit VR Little Endian"


def test_missing_decoder_names_the_transfer_syntax(monkeypatch):
    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})
    path = PYDICOM_FILES / "MR_small_jp2klossless.dcm"
    with pytest.raises(ImageReadError, match="JPEG 2000") as e:
        read_dicom(path)
    assert str(e.value).startswith(str(path)) and "decoder" in str(e.value)


@pytest.fixture(scope="module")
def rg1():
    """RG1_UNCR: a real PA chest CR, MONOCHROME1, 1955x1841, window 15000/30000 (read once per module)."""
    if PYDICOM_DATA is None:
        pytest.skip("pydicom-data (module data_store) not installed")
    path = PYDICOM_DATA / "RG1_UNCR.dcm"
    arr, meta = read_dicom(path)
    return path, arr, meta, pydicom.dcmread(path)


def test_monochrome1_is_inverted_after_the_window(rg1):
    _, arr, meta, ds = rg1
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    np.testing.assert_allclose(arr, 1 - linear_window(ds.pixel_array, 15000, 30000), atol=1e-5)
    assert meta["view"] == "PA" and meta["modality"] == "CR" and meta["patient_id"] == pseudonym("9RG1") and "9RG1" not in str(meta)
    assert meta["spacing"] is None  # the file says PixelSpacing 0.000\0.000: unknown, not zero


def test_chest_lungs_are_darker_than_mediastinum(rg1):
    _, arr, _, _ = rg1
    h, w = arr.shape
    band = slice(int(0.35 * h), int(0.6 * h))  # mid-height, above the diaphragm
    centre = arr[band, int(0.45 * w):int(0.55 * w)].mean()
    left, right = arr[band, int(0.2 * w):int(0.3 * w)].mean(), arr[band, int(0.7 * w):int(0.8 * w)].mean()
    assert centre > left + 0.1 and centre > right + 0.1


def test_jpeg2000_lossless_cr_equals_uncompressed(rg1):
    _, arr, _, _ = rg1
    j2k, meta = read_dicom(PYDICOM_DATA / "RG1_J2KR.dcm")
    np.testing.assert_array_equal(j2k, arr)
    assert meta["transfer_syntax"] == "JPEG 2000 Image Compression (Lossless Only)"


@needs_pydicom_data
def test_ap_view():
    assert read_header(PYDICOM_DATA / "RG3_UNCR.dcm")["view"] == "AP"


@needs_pydicom_data
def test_multiframe_index():
    path = PYDICOM_DATA / "emri_small.dcm"
    frames = pydicom.dcmread(path).pixel_array  # (10, 64, 64), no window: each frame min-max scaled
    first, meta = read_image(path)
    last, meta9 = read_image(path, 9)
    np.testing.assert_allclose(first, minmax(frames[0]), atol=1e-6)
    np.testing.assert_allclose(last, minmax(frames[9]), atol=1e-6)
    assert not np.allclose(first, last)
    assert meta["n_images"] == 10 and (meta["index"], meta9["index"]) == (0, 9)
    with pytest.raises(ImageReadError, match="frame 10 out of range") as e:
        read_image(path, 10)
    assert "emri_small.dcm" in str(e.value)


@needs_pydicom_data
def test_voi_lut_sequence():
    ds = pydicom.dcmread(PYDICOM_DATA / "vlut_04.dcm")
    arr, meta = read_dicom(PYDICOM_DATA / "vlut_04.dcm")
    bits = ds.VOILUTSequence[0].LUTDescriptor[2]
    np.testing.assert_allclose(arr, apply_voi_lut(ds.pixel_array, ds) / (2**bits - 1), atol=1e-6)
    assert arr.min() >= 0 and arr.max() <= 1 and meta["voi"] == "lut"


@needs_pydicom_data
def test_modality_lut_sequence():
    ds = pydicom.dcmread(PYDICOM_DATA / "mlut_18.dcm")
    arr, _ = read_dicom(PYDICOM_DATA / "mlut_18.dcm")
    np.testing.assert_allclose(arr, minmax(apply_modality_lut(ds.pixel_array, ds)), atol=1e-6)


def test_ybr_jpeg_becomes_rgb_then_luma():
    path = PYDICOM_FILES / "SC_rgb_jpeg_dcmtk.dcm"
    rgb, meta = read_dicom(path, gray=False)
    grey, _ = read_dicom(path)
    assert rgb.shape == (100, 100, 3) and grey.shape == (100, 100) and meta["color"]
    np.testing.assert_allclose(grey, luma(rgb), atol=1e-6)
    if PYDICOM_DATA is not None:  # the same picture stored as uncompressed RGB
        reference = pydicom.dcmread(PYDICOM_DATA / "SC_rgb.dcm").pixel_array / 255
        assert np.abs(rgb - reference).mean() < 0.03


@needs_pydicom_data
def test_palette_colour_without_preamble():
    path = PYDICOM_DATA / "OT-PAL-8-face.dcm"  # no 128-byte preamble and no 'DICM': read anyway
    rgb, meta = read_dicom(path, gray=False)
    ds = pydicom.dcmread(path, force=True)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    bits = ds.RedPaletteColorLookupTableDescriptor[2]
    np.testing.assert_allclose(rgb, apply_color_lut(ds.pixel_array, ds) / (2**bits - 1), atol=1e-6)
    assert meta["photometric"] == "PALETTE COLOR" and read_dicom(path)[0].shape == (480, 640)


def test_read_header_ct_small():
    meta = read_header(PYDICOM_FILES / "CT_small.dcm")
    assert (meta["patient_id"], meta["modality"], meta["shape"], meta["n_images"]) == (pseudonym("1CT1"), "CT", (128, 128), 1)
    assert meta["study_id"] == "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"


@needs_pydicom_data
def test_read_header_does_not_decode_pixels(monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("read_header decoded pixels")

    monkeypatch.setattr(dicom, "pixel_array", no_decoding)  # the DICOM reader lives in dicom.py
    path = PYDICOM_DATA / "RG1_UNCR.dcm"
    read_header(path)  # warm the file cache
    start = time.perf_counter()
    meta = read_header(path)
    assert time.perf_counter() - start < 0.05
    assert (meta["patient_id"], meta["view"], meta["modality"], meta["shape"]) == (pseudonym("9RG1"), "PA", "CR", (1955, 1841))
    assert meta["study_id"] == "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"


# ---------------------------------------------------------------- PNG / JPEG / TIFF

def test_png_8bit_exact(tmp_path):
    a = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(a).save(tmp_path / "a.png")
    arr, meta = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(arr, a.astype(np.float32) / 255)
    assert arr[-1, -1] == 1.0 and meta["bits"] == 8 and meta["format"] == "png" and set(META_KEYS) <= set(meta)


def test_png_16bit_divides_by_65535_not_by_the_image_max(tmp_path):
    a = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "full.png")
    arr, meta = read_image(tmp_path / "full.png")
    np.testing.assert_allclose(arr, [[0, 1000 / 65535, 32768 / 65535, 1.0]], atol=1e-7)
    assert arr[0, 3] == 1.0 and meta["bits"] == 16
    Image.fromarray(np.array([[0, 500, 1000]], dtype=np.uint16)).save(tmp_path / "dim.png")
    dim, _ = read_image(tmp_path / "dim.png")
    assert dim.max() == pytest.approx(1000 / 65535)


def test_rgb_png_grey_is_luma(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    grey, _ = read_image(tmp_path / "c.png")
    colour, meta = read_image(tmp_path / "c.png", gray=False)
    np.testing.assert_allclose(grey, luma(rgb.astype(np.float64)) / 255, atol=1e-6)
    np.testing.assert_array_equal(colour, rgb.astype(np.float32) / 255)
    assert colour.shape == (8, 9, 3) and meta["shape"] == (8, 9, 3)
    Image.fromarray(np.dstack([rgb, np.full((8, 9), 7, np.uint8)])).save(tmp_path / "rgba.png")
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png")[0], grey, atol=1e-6)  # alpha is dropped


def test_palette_png(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="P")
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.save(tmp_path / "p.png")
    arr, _ = read_image(tmp_path / "p.png")
    np.testing.assert_allclose(arr, [[0.299, 0.114], [0.114, 0.299]], atol=1e-6)


def test_multipage_tiff(tmp_path):
    pages = [Image.fromarray(np.full((4, 5), v, np.uint8)) for v in (10, 20, 30)]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    arr, meta = read_image(tmp_path / "m.tif", 2)
    assert meta["n_images"] == 3 and meta["format"] == "tiff" and np.all(arr == np.float32(30) / 255)
    assert np.all(read_png_jpeg_tiff(tmp_path / "m.tif")[0] == np.float32(10) / 255)
    with pytest.raises(ImageReadError, match="page 3 out of range"):
        read_image(tmp_path / "m.tif", 3)


def test_16bit_tiff(tmp_path):
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(tmp_path / "s.tiff")
    np.testing.assert_allclose(read_image(tmp_path / "s.tiff")[0], [[0, 32768 / 65535, 1]], atol=1e-7)


def test_jpeg_roughly_equal(tmp_path):
    y, x = np.mgrid[0:32, 0:32]
    a = (4 * x + 2 * y).astype(np.uint8)  # smooth: JPEG keeps it well
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
    arr, meta = read_image(tmp_path / "a.jpg")
    np.testing.assert_allclose(arr, a / 255, atol=0.05)
    assert meta["format"] == "jpeg"


def test_read_header_png(tmp_path):
    Image.fromarray(np.zeros((6, 7), np.uint16)).save(tmp_path / "h.png")
    meta = read_header(tmp_path / "h.png")
    assert (meta["shape"], meta["bits"], meta["n_images"], meta["format"]) == ((6, 7), 16, 1, "png")


# ---------------------------------------------------------------- NIfTI

@pytest.fixture(scope="module")
def anatomical():
    path = NIBABEL_DATA / "anatomical.nii"
    volume = nib.load(path).get_fdata()
    lo, hi = np.percentile(volume, [0.5, 99.5])
    return path, np.clip((volume - lo) / (hi - lo), 0, 1)


def test_nifti_slices_share_the_volume_robust_scale(anatomical):
    path, expected = anatomical
    assert expected.shape == (33, 41, 25)
    for axis in range(3):
        meta = read_header(path) if axis == 2 else read_nifti(path, axis=axis)[1]
        assert meta["n_images"] == expected.shape[axis]
    middle, meta = read_image(path)
    np.testing.assert_array_equal(middle, read_image(path, 12)[0])
    np.testing.assert_allclose(middle, expected[:, :, 12], atol=1e-5)
    assert meta["index"] == 12 and meta["shape"] == (33, 41) and meta["patient_id"] is None
    side, meta0 = read_nifti(path, 5, axis=0)
    np.testing.assert_allclose(side, expected[5], atol=1e-5)
    assert meta0["shape"] == (41, 25) and side.min() >= 0 and side.max() <= 1
    assert meta["spacing"] == pytest.approx(nib.load(path).header.get_zooms()[:2]) and set(META_KEYS) <= set(meta)


def test_nifti_volume(anatomical):
    path, expected = anatomical
    vol, meta = read_nifti(path, volume=True)
    assert vol.shape == (33, 41, 25) and vol.dtype == np.float32 and meta["shape"] == (33, 41, 25)
    np.testing.assert_allclose(vol, expected, atol=1e-5)


def test_nifti_4d_takes_the_first_volume():
    path = NIBABEL_DATA / "example4d.nii.gz"
    first = nib.load(path).get_fdata()[..., 0]
    lo, hi = np.percentile(first, [0.5, 99.5])
    arr, meta = read_image(path, 3)
    np.testing.assert_allclose(arr, np.clip((first[:, :, 3] - lo) / (hi - lo), 0, 1), atol=1e-5)
    assert meta["n_images"] == first.shape[2] and read_nifti(path, volume=True)[0].ndim == 3


def test_nifti_out_of_range_and_nan(tmp_path):
    with pytest.raises(ImageReadError, match="slice 25 out of range"):
        read_image(NIBABEL_DATA / "anatomical.nii", 25)
    data = np.ones((4, 4, 3), np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(ImageReadError, match="NaN") as e:
        read_image(tmp_path / "nan.nii.gz")
    assert "nan.nii.gz" in str(e.value)


# ---------------------------------------------------------------- npz

@pytest.fixture
def medmnist_file(tmp_path):
    rng = np.random.default_rng(1)
    splits = {"train": 5, "val": 2, "test": 3}
    arrays = {}
    for split, n in splits.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1))
    np.savez(tmp_path / "mini.npz", **arrays)
    return tmp_path / "mini.npz", arrays


def test_medmnist_npz(medmnist_file):
    path, arrays = medmnist_file
    npz = read_npz(path)
    assert isinstance(npz, NpzArrays) and npz.kind == "medmnist" and list(npz.images) == ["train", "val", "test"]
    assert npz.n_images == 10 and npz.labels["val"].shape == (2, 1) and npz.fields == {}
    np.testing.assert_array_equal(npz_image(npz, "test", 2), arrays["test_images"][2] / np.float32(255))
    arr, meta = read_image(path, 6)  # rows are counted across train (5), val, test
    np.testing.assert_array_equal(arr, arrays["val_images"][1] / np.float32(255))
    assert (meta["split"], meta["row"], meta["n_images"]) == ("val", 1, 10)
    assert meta["label"] == arrays["val_labels"][1].tolist() and set(META_KEYS) <= set(meta)
    with pytest.raises(ImageReadError, match="pass index"):
        read_image(path)
    with pytest.raises(ImageReadError, match="row 10 out of range"):
        read_image(path, 10)
    with pytest.raises(ImageReadError, match="no split"):
        npz_image(npz, "holdout", 0)


def test_npz_is_cached_read_only_and_reloaded_when_changed(medmnist_file):
    path, arrays = medmnist_file
    first = read_npz(path)
    assert read_npz(path) is first
    with pytest.raises(ValueError):
        first.images["train"][0, 0, 0] = 1
    arrays["train_images"] = arrays["train_images"][:4]
    arrays["train_labels"] = arrays["train_labels"][:4]
    np.savez(path, **arrays)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert read_npz(path).n_images == 9


def test_generic_npz_with_fields(tmp_path):
    images = np.array([[[0, 65535]], [[32768, 0]], [[1, 2]]], dtype=np.uint16)
    np.savez(tmp_path / "g.npz", images=images, patientid=np.array(["p1", "p1", "p2"]),
             view=np.array(["PA", "L", "AP"]), finding=np.array(["COVID-19", "COVID-19", "No Finding"]))
    npz = read_npz(tmp_path / "g.npz")
    assert npz.kind == "generic" and list(npz.images) == [""] and set(npz.fields) == {"patientid", "view", "finding"}
    arr, meta = read_image(tmp_path / "g.npz", 1)
    np.testing.assert_allclose(arr, [[32768 / 65535, 0]], atol=1e-7)
    assert (meta["patient_id"], meta["view"], meta["fields"]["finding"]) == ("p1", "L", "COVID-19")


def test_npz_rgb_and_float_scaling(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", images=rgb)
    npz = read_npz(tmp_path / "rgb.npz")
    np.testing.assert_allclose(npz_image(npz, "", 1), luma(rgb[1] / 255.0), atol=1e-6)
    assert npz_image(npz, "", 1, gray=False).shape == (3, 4, 3)
    unit = np.array([[[0.25, 0.5]]], np.float32)
    wide = np.array([[[-10.0, 0.0]], [[10.0, 30.0]]])
    np.savez(tmp_path / "f.npz", train_images=unit, test_images=wide)
    npz = read_npz(tmp_path / "f.npz")
    np.testing.assert_array_equal(npz_image(npz, "train", 0), unit[0])  # already in [0, 1]: unchanged
    np.testing.assert_allclose(npz_image(npz, "test", 1), [[0.5, 1.0]])  # one min-max for the whole array


@pytest.mark.skipif(not (SHARED_DATA / "pneumoniamnist_28.npz").exists(), reason="shared PneumoniaMNIST file absent")
def test_real_pneumoniamnist():
    npz = read_npz(SHARED_DATA / "pneumoniamnist_28.npz")
    assert {s: len(a) for s, a in npz.images.items()} == {"train": 4708, "val": 524, "test": 624}
    assert all(set(np.unique(lab)) <= {0, 1} for lab in npz.labels.values())
    assert read_image(SHARED_DATA / "pneumoniamnist_28.npz", 0)[0].shape == (28, 28)


@pytest.mark.skipif(not (SHARED_DATA / "covid_cxr_224.npz").exists(), reason="shared COVID-19 CXR file absent")
def test_real_covid_npz():
    npz = read_npz(SHARED_DATA / "covid_cxr_224.npz")
    assert npz.kind == "generic" and npz.n_images == 575
    assert {"patientid", "view", "finding"} <= set(npz.fields)
    arr, meta = read_image(SHARED_DATA / "covid_cxr_224.npz", 0)
    assert arr.shape == (224, 224) and meta["patient_id"] == str(npz.fields["patientid"][0]).strip()


# ---------------------------------------------------------------- bad input

def _png_bytes() -> bytes:
    from io import BytesIO

    buf = BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _make_bad(tmp_path: Path, kind: str) -> Path:
    """A bad file of the given kind in tmp_path."""
    rng = np.random.default_rng(4)
    makers = {
        "empty.png": lambda p: p.write_bytes(b""),
        "truncated.png": lambda p: p.write_bytes(_png_bytes()[:2000]),  # the file is about 4 kB
        "random.dcm": lambda p: p.write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()),
        "random.nii.gz": lambda p: p.write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()),
        "random.npz": lambda p: p.write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()),
        "MR_truncated.dcm": lambda p: shutil.copy(PYDICOM_FILES / "MR_truncated.dcm", p),
        "half_CT.dcm": lambda p: p.write_bytes((PYDICOM_FILES / "CT_small.dcm").read_bytes()[:20000]),
        "rtplan.dcm": lambda p: shutil.copy(PYDICOM_FILES / "rtplan.dcm", p),
        "image.bmp": lambda p: Image.fromarray(np.zeros((4, 4), np.uint8)).save(p),
        "notes.txt": lambda p: p.write_text("hello"),
        "objects.npz": lambda p: np.savez(p, images=np.array([{"a": 1}, None], dtype=object)),
        "nokey.npz": lambda p: np.savez(p, pixels=np.zeros((2, 4, 4), np.uint8)),
        "nan.tif": lambda p: Image.fromarray(np.array([[0.5, np.nan]], np.float32)).save(p),
        "nan.npz": lambda p: np.savez(p, images=np.array([[[0.5, np.nan]]])),
        "missing.png": lambda p: None,
    }
    path = tmp_path / kind
    makers[kind](path)
    return path


@pytest.mark.parametrize("kind, reason", [
    ("empty.png", "empty file"), ("truncated.png", "not a readable"), ("random.dcm", "not a DICOM file"),
    ("random.nii.gz", "NIfTI"), ("random.npz", ".npz"), ("MR_truncated.dcm", "truncated DICOM pixel data"),
    ("half_CT.dcm", "truncated"), ("rtplan.dcm", "no pixel data"), ("image.bmp", "unsupported"),
    ("notes.txt", "unsupported"), ("objects.npz", "pickled object array"), ("nokey.npz", "keys found: pixels"),
    ("nan.tif", "NaN"), ("nan.npz", "NaN"), ("missing.png", "no such file"),
])
def test_bad_input_raises_image_read_error_naming_the_file(tmp_path, kind, reason):
    path = _make_bad(tmp_path, kind)
    with pytest.raises(ImageReadError) as e:
        read_image(path, 0)
    message = str(e.value)
    assert message.startswith(str(path)) and reason in message, message
    if kind in ("truncated.png", "MR_truncated.dcm", "half_CT.dcm", "nan.tif"):
        assert read_header(path)["format"] in ("png", "dicom", "tiff")  # headers are intact; pixels are not read
    else:
        with pytest.raises(ImageReadError, match=kind.replace(".", r"\.")):
            read_header(path)


def test_dicom_with_truncated_encapsulated_pixel_data(tmp_path):
    data = (PYDICOM_FILES / "MR_small_jp2klossless.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 2000])
    with pytest.raises(ImageReadError, match="truncated") as e:
        read_image(tmp_path / "cut.dcm")
    assert str(e.value).startswith(str(tmp_path / "cut.dcm"))


def test_errors_name_the_path_as_given_even_through_the_caches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez("nokey.npz", pixels=np.zeros((2, 4, 4), np.uint8))
    nib.save(nib.Nifti1Image(np.full((2, 2, 2), np.inf, np.float32), np.eye(4)), "inf.nii")
    for name in ("nokey.npz", "inf.nii"):
        with pytest.raises(ImageReadError) as e:
            read_image(name, 0)
        assert str(e.value).startswith(f"{name}: "), str(e.value)


def test_read_header_nifti_and_npz(medmnist_file):
    meta = read_header(NIBABEL_DATA / "example4d.nii.gz")
    assert (meta["format"], meta["shape"], meta["n_images"]) == ("nifti", (128, 96), 24)
    meta = read_header(medmnist_file[0])
    assert (meta["format"], meta["shape"], meta["n_images"]) == ("npz", (8, 8), 10)
    assert meta["splits"] == {"train": 5, "val": 2, "test": 3}


def test_a_dicom_patient_id_is_kept_only_as_a_pseudonym_in_records_and_manifests(tmp_path, cli):
    """The house rule: a DICOM's patient id is never written out. Indexing wrote the raw PatientID into
    manifest.csv (and every split, report and metrics file that names patients)."""
    from pydicom.data import get_testdata_file

    folder = tmp_path / "dicoms"
    folder.mkdir()
    for i, name in enumerate(("CT_small.dcm", "MR_small.dcm")):
        (folder / f"{i}.dcm").write_bytes(Path(get_testdata_file(name)).read_bytes())
    raw = {str(pydicom.dcmread(get_testdata_file(n)).PatientID) for n in ("CT_small.dcm", "MR_small.dcm")}
    code, out, err = cli("data", "index", folder)
    assert code == 0, err
    text = (folder / "manifest.csv").read_text()
    assert not any(r in text or r in out for r in raw)
    assert all(pseudonym(r) in text for r in raw)               # still grouped by patient
