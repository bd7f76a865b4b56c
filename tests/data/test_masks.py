"""Segmentation masks (medssl.data.masks): each encoding on values written by hand, PNG and NIfTI files, nearest
resizing, where the MaskSpec comes from, and errors that name the file."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medssl.data.masks import MaskSpec, decode_mask, mask_spec, read_mask, read_masks, resize_nearest
from medssl.data.records import Record, read_manifest
from medssl.errors import MedsslError
from medssl.synthetic import FINDINGS, generate

ABC = ("a", "b", "c")


def _png(tmp_path, values: np.ndarray, name: str = "m.png", **extra: str) -> Record:
    """A record whose mask is `values` saved as a PNG (uint8 -> mode L, uint16 -> I;16, bool -> mode 1)."""
    Image.fromarray(values).save(tmp_path / name)
    return Record(path=str(tmp_path / f"img_{name}"), patient_id="p", mask=str(tmp_path / name), extra=extra)


# ---------------------------------------------------------------- each encoding, by hand

def test_bits_set_bit_k_is_class_k(tmp_path):
    rec = _png(tmp_path, np.array([[0, 1, 2, 3], [4, 5, 6, 7]] * 2, np.uint8))
    m = read_mask(rec, MaskSpec("bits", ABC), 4)
    assert m.shape == (3, 4, 4) and m.dtype == np.uint8
    np.testing.assert_array_equal(m[0], [[0, 1, 0, 1]] * 4)                          # bit 0: odd values
    np.testing.assert_array_equal(m[1], [[0, 0, 1, 1]] * 4)                          # bit 1: 2, 3, 6, 7
    np.testing.assert_array_equal(m[2], [[0, 0, 0, 0], [1, 1, 1, 1]] * 2)            # bit 2: 4..7


@pytest.mark.parametrize("on", [255, 1])
def test_binary_any_nonzero_is_the_class(tmp_path, on):
    rec = _png(tmp_path, np.array([[0, on], [on, 0]], np.uint8))
    m = read_mask(rec, MaskSpec("binary", ("lesion",)), 2)
    np.testing.assert_array_equal(m, [[[0, 1], [1, 0]]])


def test_binary_from_a_one_bit_png(tmp_path):
    rec = _png(tmp_path, np.array([[True, False], [False, False]]))
    np.testing.assert_array_equal(read_mask(rec, MaskSpec("binary", ("x",)), 2), [[[1, 0], [0, 0]]])


def test_label_image_value_k_is_class_k(tmp_path):
    rec = _png(tmp_path, np.array([[0, 1], [2, 3]], np.uint8))
    m = read_mask(rec, MaskSpec("label", ABC), 2)
    np.testing.assert_array_equal(m[0], [[0, 1], [0, 0]])
    np.testing.assert_array_equal(m[1], [[0, 0], [1, 0]])
    np.testing.assert_array_equal(m[2], [[0, 0], [0, 1]])
    assert m.sum() == 3                                         # one class per labelled pixel, none for 0


def test_sixteen_bit_label_png_is_read_unscaled(tmp_path):
    rec = _png(tmp_path, np.array([[0, 2], [1, 0]], np.uint16))   # / 65535 would make every value 0
    m = read_mask(rec, MaskSpec("label", ("x", "y")), 2)
    np.testing.assert_array_equal(m[1], [[0, 1], [0, 0]])
    np.testing.assert_array_equal(m[0], [[0, 0], [1, 0]])


def test_palette_png_gives_its_indices(tmp_path):
    img = Image.fromarray(np.array([[0, 2], [1, 0]], np.uint8)).convert("P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    img.save(tmp_path / "p.png")
    rec = Record(path="img.png", patient_id="p", mask=str(tmp_path / "p.png"))
    np.testing.assert_array_equal(read_mask(rec, MaskSpec("label", ("x", "y")), 2)[1], [[0, 1], [0, 0]])


def test_decode_mask_keeps_leading_dimensions():
    values = np.array([[[1, 0]], [[2, 3]]])                     # (N=2, H=1, W=2)
    out = decode_mask(values, MaskSpec("bits", ("a", "b")))
    assert out.shape == (2, 2, 1, 2)
    np.testing.assert_array_equal(out[1], [[[0, 1]], [[1, 1]]])


# ---------------------------------------------------------------- NIfTI label volumes

def _volume(tmp_path, name: str = "seg.nii.gz") -> tuple[np.ndarray, Record]:
    data = np.zeros((4, 4, 3), np.int16)                        # slice k along axis 2 is data[:, :, k]
    data[0, 0, 0] = 1
    data[1, 2, 1], data[3, 3, 1] = 2, 3
    data[2, :, 2] = 3
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / name)
    return data, Record(path=str(tmp_path / "ct.nii.gz"), patient_id="p", mask=str(tmp_path / name))


@pytest.mark.parametrize("name", ["seg.nii.gz", "seg.nii"])
def test_nifti_slice_i_gives_exactly_the_labels_of_slice_i(tmp_path, name):
    _, rec = _volume(tmp_path, name)
    spec = MaskSpec("label", ABC)
    m = [read_mask(Record(rec.path, "p", index=i, mask=rec.mask), spec, 4) for i in range(3)]
    on = [sorted((int(c), int(y), int(x)) for c, y, x in zip(*np.nonzero(mi))) for mi in m]
    assert on[0] == [(0, 0, 0)]                                  # slice 0: label 1 (a) at voxel (0, 0)
    assert on[1] == [(1, 1, 2), (2, 3, 3)]                       # slice 1: b at (1, 2), c at (3, 3)
    assert on[2] == [(2, 2, x) for x in range(4)]                # slice 2: c along row 2


def test_nifti_without_index_is_the_middle_slice_and_a_bad_slice_names_the_file(tmp_path):
    data, rec = _volume(tmp_path)
    spec = MaskSpec("label", ABC)
    np.testing.assert_array_equal(read_mask(rec, spec, 4), read_mask(Record(rec.path, "p", index=1, mask=rec.mask),
                                                                     spec, 4))
    with pytest.raises(MedsslError, match=r"seg\.nii\.gz.*slice 3 out of range"):
        read_mask(Record(rec.path, "p", index=3, mask=rec.mask), spec, 4)


def test_nifti_label_outside_the_classes_names_the_file_and_slice(tmp_path):
    _, rec = _volume(tmp_path)
    with pytest.raises(MedsslError, match=r"seg\.nii\.gz slice 1 .*value 3 is outside labels 0\.\.2"):
        read_mask(Record(rec.path, "p", index=1, mask=rec.mask), MaskSpec("label", ("a", "b")), 4)


def test_nifti_float_labels_must_be_whole_numbers(tmp_path):
    data = np.zeros((2, 2, 1), np.float32)
    data[0, 1, 0], data[1, 1, 0] = 1.0, 1.5
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "f.nii")
    rec = Record(path="ct.nii", patient_id="p", index=0, mask=str(tmp_path / "f.nii"))
    with pytest.raises(MedsslError, match=r"f\.nii slice 0: mask value 1\.5 is not a whole number"):
        read_mask(rec, MaskSpec("label", ("a",)), 2)
    data[1, 1, 0] = 1.0                                         # 1.0 stored as float is label 1, exactly
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "g.nii")
    rec = Record(path="ct.nii", patient_id="p", index=0, mask=str(tmp_path / "g.nii"))
    np.testing.assert_array_equal(read_mask(rec, MaskSpec("label", ("a",)), 2), [[[0, 1], [0, 1]]])


# ---------------------------------------------------------------- resizing

def test_resize_is_nearest_neighbour(tmp_path):
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    up = read_mask(_png(tmp_path, labels), MaskSpec("label", ABC), 4)     # each pixel becomes a 2 x 2 block
    np.testing.assert_array_equal(up[2], np.kron([[0, 0], [0, 1]], np.ones((2, 2), np.uint8)))
    big = np.zeros((8, 8), np.uint8)
    big[1::2, 1::2] = 255                                                  # on only where row and column are odd
    down = read_mask(_png(tmp_path, big, "big.png"), MaskSpec("binary", ("x",)), 4)
    np.testing.assert_array_equal(down[0], np.ones((4, 4)))                # 8 -> 4 keeps rows/cols 1, 3, 5, 7
    # 3 -> 2: output pixel centres fall on input 0.75 and 2.25, i.e. pixels 0 and 2
    np.testing.assert_array_equal(resize_nearest(np.arange(9).reshape(3, 3), 2), [[0, 2], [6, 8]])
    assert set(np.unique(up)) <= {0, 1}


def test_read_masks_stacks_records(tmp_path):
    recs = [_png(tmp_path, np.full((3, 3), v, np.uint8), f"{v}.png") for v in (0, 255, 255)]
    out = read_masks(recs, MaskSpec("binary", ("x",)), 2)
    assert out.dtype == torch.uint8 and out.shape == (3, 1, 2, 2)
    assert out.sum(dim=(1, 2, 3)).tolist() == [0, 4, 4]


# ---------------------------------------------------------------- bad input names the file

def test_label_value_outside_the_classes_names_the_file_and_value(tmp_path):
    rec = _png(tmp_path, np.array([[0, 4]], np.uint8), "four.png")
    with pytest.raises(MedsslError, match=r"four\.png.*value 4 is outside labels 0\.\.3"):
        read_mask(rec, MaskSpec("label", ABC), 2)
    with pytest.raises(MedsslError, match=r"four\.png.*value 4 is outside bit values 0\.\.3"):
        read_mask(rec, MaskSpec("bits", ("a", "b")), 2)


def test_rgb_mask_is_refused_with_its_name(tmp_path):
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    rec = Record(path="img.png", patient_id="p", mask=str(tmp_path / "rgb.png"))
    with pytest.raises(MedsslError, match=r"rgb\.png: mask has 3 channels \(mode RGB\).*not colour"):
        read_mask(rec, MaskSpec("binary", ("x",)), 2)


def test_missing_mask_file_and_empty_column_name_the_image(tmp_path):
    with pytest.raises(MedsslError, match=r"gone\.png: mask file not found \(mask of /data/x\.png\)"):
        read_mask(Record(path="/data/x.png", patient_id="p", mask=str(tmp_path / "gone.png")),
                  MaskSpec("binary", ("x",)), 2)
    with pytest.raises(MedsslError, match=r"/data/no_mask_here\.png: no mask"):
        read_masks([Record(path="/data/no_mask_here.png", patient_id="p")], MaskSpec("binary", ("x",)), 2)
    (tmp_path / "m.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(MedsslError, match=r"m\.jpg: mask format 'jpeg' is not supported"):
        read_mask(Record(path="i.png", patient_id="p", mask=str(tmp_path / "m.jpg")), MaskSpec("binary", ("x",)), 2)


@pytest.mark.parametrize("encoding, classes, expect", [
    ("rle", ("x",), "encoding 'rle'"), ("binary", ("x", "y"), "holds one class"), ("label", (), "one or more"),
    ("label", ("x", "x"), "distinct"),
])
def test_mask_spec_refuses_bad_values(encoding, classes, expect):
    with pytest.raises(MedsslError, match=expect):
        MaskSpec(encoding, classes)


# ---------------------------------------------------------------- where the spec comes from

def test_mask_spec_options_win_over_columns(tmp_path):
    rec = _png(tmp_path, np.zeros((2, 2), np.uint8), mask_encoding="bits", mask_classes="p|q")
    assert mask_spec([rec]) == MaskSpec("bits", ("p", "q"))
    assert mask_spec([rec], "label", ["u", "v", "w"]) == MaskSpec("label", ("u", "v", "w"))
    with pytest.raises(MedsslError, match="'binary' holds one class, got 2"):  # the column's p|q do not fit
        mask_spec([rec], "binary")
    with pytest.raises(MedsslError, match="mask-encoding 'rle'"):
        mask_spec([rec], "rle")


@pytest.mark.parametrize("on", [255, 1])
def test_mask_spec_guesses_binary_from_a_0_1_or_0_255_mask(tmp_path, on):
    empty = _png(tmp_path, np.zeros((2, 2), np.uint8), "empty.png")            # says nothing: the next one is read
    rec = _png(tmp_path, np.array([[0, on]], np.uint8))
    assert mask_spec([empty, rec]) == MaskSpec("binary", ("foreground",))
    assert mask_spec([rec], classes=["lesion"]) == MaskSpec("binary", ("lesion",))


def test_mask_spec_without_a_declared_encoding_asks_for_one(tmp_path):
    rec = _png(tmp_path, np.array([[0, 1, 2]], np.uint8), "lab.png")
    with pytest.raises(MedsslError, match=r"lab\.png.*mask values 0, 1, 2 .*--mask-encoding"):
        mask_spec([rec])
    with pytest.raises(MedsslError, match="2 mask classes but no mask encoding.*--mask-encoding"):
        mask_spec([rec], classes=["a", "b"])
    with pytest.raises(MedsslError, match="'label' needs class names.*--mask-classes"):
        mask_spec([rec], "label")


def test_mask_columns_must_agree_and_be_known(tmp_path):
    a = _png(tmp_path, np.zeros((2, 2), np.uint8), "a.png", mask_encoding="label", mask_classes="x")
    b = _png(tmp_path, np.zeros((2, 2), np.uint8), "b.png", mask_encoding="bits", mask_classes="x")
    with pytest.raises(MedsslError, match="column 'mask_encoding' must hold one value.*'bits', 'label'"):
        mask_spec([a, b])
    c = _png(tmp_path, np.zeros((2, 2), np.uint8), "c.png", mask_encoding="rgb", mask_classes="x")
    with pytest.raises(MedsslError, match="column 'mask_encoding' 'rgb' is not one of"):
        mask_spec([c])


def test_phantom_manifest_declares_bits_and_reads_back_the_generated_masks(synth_manifest):
    records = read_manifest(synth_manifest)
    assert all(r.extra["mask_encoding"] == "bits" and r.extra["mask_classes"] == "|".join(FINDINGS)
               for r in records)
    spec = mask_spec(records)
    assert spec == MaskSpec("bits", FINDINGS)
    expected = decode_mask(generate(12, size=32, seed=0).masks, spec)   # conftest: 12 patients, 32 px, seed 0
    assert torch.equal(read_masks(records, spec, 32), torch.from_numpy(expected))


def test_masks_module_stays_in_the_data_layer():
    code = ("import sys, medssl.data.masks; bad = [m for m in sys.modules if m.startswith(('medssl.synthetic', "
            "'medssl.evaluate', 'medssl.models', 'medssl.train'))]; print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
