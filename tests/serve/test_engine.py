"""The service's Grad-CAM: the same maps as MONAI's GradCAM (evaluate.plots.grad_cam), without touching the model."""

from __future__ import annotations

import numpy as np
import torch

from medssl.data.tasks import Task
from medssl.evaluate.outputs import ImagesToLogits, _target_layer
from medssl.evaluate.plots import grad_cam
from medssl.models.classifier import Classifier
from medssl.models.factory import ModelSpec, build_backbone
from medssl.serve.engine import grad_cam_map
from serving import serve_run  # noqa: F401  (fixture)


def test_grad_cam_map_equals_monais_and_leaves_the_model_alone():
    torch.manual_seed(0)
    spec = ModelSpec(backbone="resnet18", stem="small", width=8, in_channels=1, image_size=32)
    model = Classifier(build_backbone(spec), Task("multilabel", ("a", "b", "c"))).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(1, 1, 32, 32)
    for c in range(3):
        ours = grad_cam_map(model, x, c)
        monai, _ = grad_cam(ImagesToLogits(model), x, "model." + _target_layer(model), class_index=c)
        np.testing.assert_allclose(ours, monai[0], atol=1e-5)
        assert ours.shape == (32, 32) and 0 <= ours.min() and ours.max() <= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not model._forward_hooks and not model.backbone._forward_hooks


def test_an_engine_serves_whatever_a_folder_or_file_holds(serve_run, tmp_path):
    import pytest

    from medssl.errors import MedsslError
    from medssl.serve.engine import load_engine

    from test_serve import png

    bundle = next(serve_run.glob("evaluate/*/bundles/*.pt"))
    only_classifier = load_engine(bundle)
    r = only_classifier.analyze(png(0), "upload")
    assert "findings" in r and "heatmap" in r and "report" not in r
    only_report = load_engine(serve_run / "report" / "lstm")
    r = only_report.analyze(png(0), "upload")
    assert "findings" not in r and r["report"]["method"] == "lstm"
    assert set(only_report.describe()) >= {"generator", "notes"} and "classifier" not in only_report.describe()
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsslError, match="holds no classifier bundle"):
        load_engine(tmp_path / "empty")
    with pytest.raises(MedsslError, match="no such run"):
        load_engine(tmp_path / "missing")
    with pytest.raises(MedsslError, match="upload: not a DICOM"):
        only_report.analyze(b"GIF89a not supported", "upload")
