"""Loading a model for use imports no training code, and a bundle predicts on any image file, DICOM included."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from medssl.data.preprocess import Preprocess
from medssl.data.tasks import Task
from medssl.errors import MedsslError
from medssl.inference import load_bundle, predict, save_bundle
from medssl.models.factory import ModelSpec, build_classifier

TRAINING_MODULES = ("lightning_fabric", "lightning", "medssl.train", "medssl.methods", "medssl.config",
                    "medssl.pretrain", "medssl.data.datasets", "medssl.evaluate")


def _bundle(tmp_path, task: Task) -> tuple:
    spec = ModelSpec("resnet18", stem="cifar", in_channels=1, image_size=16)
    torch.manual_seed(0)
    model = build_classifier(spec, task)
    return save_bundle(tmp_path / "b.pt", model, spec, Preprocess(16, 1), {"protocol": "finetune"}), model


def test_loading_a_bundle_imports_no_training_code(tmp_path):
    path, _ = _bundle(tmp_path, Task("binary", ("normal", "pneumonia")))
    code = (f"import sys; from medssl.inference import load_bundle; b = load_bundle({str(path)!r}); "
            f"print([m for m in sys.modules if m.startswith({TRAINING_MODULES!r})])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_bundle_round_trip_predicts_the_same_probabilities(tmp_path):
    task = Task("multiclass", ("a", "b", "c"))
    path, model = _bundle(tmp_path, task)
    bundle = load_bundle(path)
    assert bundle.task == task and bundle.preprocess == Preprocess(16, 1) and bundle.meta["protocol"] == "finetune"
    x = np.random.default_rng(0).random((20, 20), dtype=np.float32)
    expected = torch.softmax(model.eval().logits(Preprocess(16, 1)(x)[None]), 1)[0].detach().numpy()
    (r,) = predict(bundle, [x])
    assert list(r["probabilities"]) == ["a", "b", "c"]
    assert np.allclose(list(r["probabilities"].values()), expected, atol=1e-6)
    assert r["predicted"] == [task.classes[int(expected.argmax())]]


def test_binary_bundle_gives_both_classes_and_reads_dicom(tmp_path):
    from pydicom.data import get_testdata_file

    path, _ = _bundle(tmp_path, Task("binary", ("normal", "pneumonia")))
    (r,) = predict(load_bundle(path), [get_testdata_file("CT_small.dcm")])
    p = r["probabilities"]
    assert set(p) == {"normal", "pneumonia"} and p["normal"] + p["pneumonia"] == pytest.approx(1.0)


def test_predict_cli_on_a_dicom_prints_json_and_no_patient_data(tmp_path, cli):
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    dcm = get_testdata_file("CT_small.dcm")
    path, _ = _bundle(tmp_path, Task("multilabel", ("x", "y")))
    code, out, err = cli("predict", path, dcm, "--json")
    assert code == 0, err
    result = json.loads(out)["results"][0]
    assert set(result["probabilities"]) == {"x", "y"}
    ds = dcmread(dcm)
    for secret in (str(ds.PatientName), str(ds.PatientID)):
        assert secret and secret not in out and secret not in err


def test_predict_names_bad_input(tmp_path, cli):
    path, _ = _bundle(tmp_path, Task("binary", ("normal", "pneumonia")))
    (tmp_path / "bad.png").write_text("not a png")
    code, _, err = cli("predict", path, tmp_path / "bad.png")
    assert code == 2 and "bad.png" in err and "Traceback" not in err
    code, _, err = cli("predict", tmp_path / "missing.pt", tmp_path / "bad.png")
    assert code == 2 and "missing.pt" in err
    with pytest.raises(MedsslError, match="no model spec"):
        torch.save({"model": {}}, tmp_path / "old.pt")
        load_bundle(tmp_path / "old.pt")
