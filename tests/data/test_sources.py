"""Sources -> records: MedMNIST-style and generic .npz, folders, single files; the summary behind `data info`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medssl.data.records import Record
from medssl.data.sources import index_folder, load_source, npz_records, read_record_image
from medssl.data.splits import assign_splits
from medssl.data.summary import summarize
from medssl.errors import MedsslError


def _medmnist(path, n=(6, 2, 3), classes=2, multi=0):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, (k, 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = (rng.integers(0, 2, (k, multi)) if multi else
                                     (np.arange(k) % classes).reshape(k, 1))
    np.savez(path, **arrays)
    return arrays


def test_medmnist_npz_keeps_official_splits_and_names_classes(tmp_path):
    arrays = _medmnist(tmp_path / "pneumoniamnist.npz")
    recs = npz_records(tmp_path / "pneumoniamnist.npz")
    assert [r.split for r in recs] == ["train"] * 6 + ["val"] * 2 + ["test"] * 3
    assert recs[1].labels == ("pneumonia",) and recs[0].labels == ("normal",)
    assert len({r.patient_id for r in recs}) == 11  # no patient ids: each image its own patient
    # global index maps back to the right row of the right split, even after re-splitting
    resplit = assign_splits(recs, (0.5, 0.25, 0.25), seed=0)
    val0 = next(r for r in resplit if r.index == 6)
    np.testing.assert_allclose(read_record_image(val0), arrays["val_images"][0] / 255.0, atol=1e-6)


def test_multilabel_and_unknown_npz_use_names_or_integer_ids(tmp_path):
    _medmnist(tmp_path / "chestmnist.npz", multi=14)
    recs = npz_records(tmp_path / "chestmnist.npz")
    assert all(set(r.labels) <= {"atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
                                 "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
                                 "pleural_thickening", "hernia", "no_finding"} for r in recs)
    _medmnist(tmp_path / "mine.npz", classes=3)
    assert {r.labels for r in npz_records(tmp_path / "mine.npz")} == {("0",), ("1",), ("2",)}


def test_generic_npz_with_patient_ids_view_finding_and_notes(tmp_path):
    np.savez(tmp_path / "g.npz", images=np.zeros((4, 8, 8), np.uint8), patientid=np.array(["a", "a", "b", "c"]),
             view=np.array(["PA", "L", "AP", "PA"]), finding=np.array(["COVID-19", "COVID-19", "No Finding", "x|y"]),
             clinical_notes=np.array(["fever", "", "cough", ""]))
    recs, bad = load_source(tmp_path / "g.npz")
    assert not bad and [r.patient_id for r in recs] == ["a", "a", "b", "c"]
    assert recs[3].labels == ("x/y",)  # '|' is the label separator, so it cannot be part of a class name
    assert recs[0].report == "fever" and recs[1].view == "L" and recs[2].split == ""


def test_folder_with_manifest_is_read_not_reindexed(synth_manifest):
    recs, _ = load_source(synth_manifest.parent)
    assert len(recs) > 12 and all(r.report for r in recs) and all(r.mask for r in recs)


def test_index_folder_multi_frame_tiff_gives_one_record_per_page(tmp_path):
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 200, 90)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    recs, bad = index_folder(tmp_path, progress=False)
    assert [r.index for r in recs] == [0, 1, 2] and not bad
    assert read_record_image(recs[1]).mean() == pytest.approx(200 / 255, abs=1e-6)


def test_index_folder_errors(tmp_path):
    with pytest.raises(MedsslError, match="not a folder"):
        index_folder(tmp_path / "absent")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(MedsslError, match="no images found"):
        index_folder(tmp_path)


def test_summary_counts_patients_studies_views_and_labels():
    recs = [Record("a.png", "P1", "S1", "PA", ("nodule",), "r", "train"),
            Record("b.png", "P1", "S1", "LATERAL", ("nodule",), "r", "train"),
            Record("c.png", "P2", "S2", "PA", (), "", "test")]
    s = summarize(recs, progress=False)
    assert (s["images"], s["patients"], s["studies"], s["patients_with_2plus_images"]) == (3, 2, 2, 1)
    assert s["views"] == {"PA": 2, "LATERAL": 1} and s["unlabelled"] == 1
    assert s["label_counts"] == {"train": {"nodule": 2}, "test": {"nodule": 0}}
    assert len(s["unreadable"]) == 3  # the files do not exist: reported, not raised
