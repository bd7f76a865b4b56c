"""Each plot writes a PNG that opens and has the figure's size; Grad-CAM leaves the model exactly as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medssl.errors import MedsslError
from medssl.evaluate.metrics import over_seeds
from medssl.evaluate.plots import (
    DPI,
    confusion_plot,
    grad_cam,
    gradcam_plot,
    label_efficiency_plot,
    roc_plot,
    tsne_plot,
)
from medssl.data.tasks import Task
from medssl.models.backbones import create_backbone

BINARY = Task("binary", ("normal", "pneumonia"))
MULTICLASS = Task("multiclass", ("a", "b", "c", "d"))
MULTILABEL = Task("multilabel", ("atelectasis", "effusion", "nodule"), "no_finding")


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG that PIL can read back."""
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def scores_for(kind: str, n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Targets in the task's shape and scores (N, K), K = task.n_outputs, with signal."""
    rng = np.random.default_rng(seed)
    if kind == "binary":
        y = rng.integers(0, 2, n)
        return y, np.clip(0.4 * y + rng.uniform(0, 0.6, n), 0, 1)[:, None]   # (N, 1)
    if kind == "multiclass":
        y = np.arange(n) % 4
        s = rng.uniform(0, 1, (n, 4)) + np.eye(4)[y]
        return y, s / s.sum(axis=1, keepdims=True)
    y = rng.integers(0, 2, (n, 3))
    return y, np.clip(0.4 * y + rng.uniform(0, 0.6, (n, 3)), 0, 1)


def test_label_efficiency_plot(tmp_path):
    curves = {
        "linear (pretrained)": {0.01: over_seeds([0.8, 0.84]), 0.1: over_seeds([0.9, 0.91]), 1.0: over_seeds([0.93])},
        "finetune (scratch)": {0.01: over_seeds([0.65, 0.7]), 0.1: over_seeds([0.85, 0.86]), 1.0: over_seeds([0.94])},
        "from metrics.json": {"0.1": {"roc_auc_macro": over_seeds([0.88, 0.9]), "accuracy": over_seeds([0.8])}},
    }
    path = label_efficiency_plot(curves, tmp_path / "sub" / "le.png", reference={"MedMNIST v2 ResNet-18 (28)": 0.944})
    assert path == tmp_path / "sub" / "le.png"
    assert png_size(path) == (round(6.4 * DPI), round(4.4 * DPI))
    with pytest.raises(MedsslError, match="curve point"):
        label_efficiency_plot({"m": {0.1: {"accuracy": 0.5}}}, tmp_path / "bad.png")


@pytest.mark.parametrize("kind, task", [("binary", BINARY), ("multiclass", MULTICLASS), ("multilabel", MULTILABEL)])
def test_roc_and_confusion_plots(tmp_path, kind, task):
    y, s = scores_for(kind)
    w, h = png_size(roc_plot(y, s, task, tmp_path / "roc.png"))
    assert 400 < w < 1200 and 400 < h < 1200
    w, h = png_size(confusion_plot(y, s, task, tmp_path / "confusion.png"))
    assert 400 < h < 1200 and h < w < 2000       # a colourbar (multilabel: a row of 3 matrices) makes it wide


def test_binary_plots_take_n_by_1_scores_only(tmp_path):
    y, s = scores_for("binary")
    for plot in (roc_plot, confusion_plot):
        with pytest.raises(MedsslError, match=r"scores of shape \(40, 1\)"):
            plot(y, s[:, 0], BINARY, tmp_path / "old.png")   # the old (N,) binary form


def test_roc_plot_with_an_undefined_class(tmp_path):
    y, s = scores_for("multilabel")
    y[:, 1] = 0
    assert png_size(roc_plot(y, s, MULTILABEL, tmp_path / "roc.png"))[0] > 400


def test_tsne_plot(tmp_path):
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (30, 8)), rng.normal(4, 1, (30, 8))])
    labels = ["normal"] * 30 + ["pneumonia"] * 30
    assert png_size(tsne_plot(features, labels, tmp_path / "tsne.png", max_points=50)) == \
        (round(6.4 * DPI), round(5.6 * DPI))
    with pytest.raises(MedsslError, match="one label per row"):
        tsne_plot(features, labels[:-1], tmp_path / "bad.png")


class Classifier(nn.Module):
    """Backbone + linear head: (B, C, H, W) -> (B, K); Grad-CAM's layer is "backbone.layer4"."""

    def __init__(self, k: int = 3):
        super().__init__()
        self.backbone, dim = create_backbone("resnet18", 1, 16)
        self.head = nn.Linear(dim, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@pytest.mark.parametrize("training", [True, False])
def test_gradcam_plot_leaves_the_model_unchanged(tmp_path, training):
    torch.manual_seed(0)
    model = Classifier().train(training)
    model.head.weight.grad = torch.ones_like(model.head.weight)   # a gradient the caller had: must survive
    before = {k: v.clone() for k, v in model.state_dict().items()}   # weights and BatchNorm running stats
    images = torch.rand(3, 1, 16, 16)
    path = gradcam_plot(model, images, "backbone.layer4", tmp_path / "cam.png", titles=["a", "b", "c"])
    w, h = png_size(path)
    assert w == round(3 * 2.2 * DPI) and h == round(2.7 * DPI)   # one row of 3 tiles
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training == training for m in model.modules())
    assert torch.equal(model.head.weight.grad, torch.ones_like(model.head.weight))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "head.weight")
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


class SumOfPixels(nn.Module):
    """Logit = sum of a 1x1-convolved image (weight 1): the evidence is wherever the image is bright."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1).sum(dim=1, keepdim=True)   # (B, 1)


def test_gradcam_is_high_where_the_evidence_is():
    # one channel: Grad-CAM = relu(mean gradient 1 x activation) = the image itself, scaled to [0, 1]
    image = torch.zeros(1, 1, 8, 8)
    image[..., :, :3] = 1.0
    maps, classes = grad_cam(SumOfPixels(), image, "conv")
    assert classes.tolist() == [0]
    np.testing.assert_allclose(maps[0], image[0, 0].numpy(), atol=1e-6)   # not flipped (MONAI's default is)


def test_gradcam_caps_at_eight_images_and_checks_its_arguments(tmp_path):
    model, images = SumOfPixels(), torch.rand(10, 1, 8, 8)
    assert png_size(gradcam_plot(model, images, "conv", tmp_path / "cam.png"))[0] == round(8 * 2.2 * DPI)
    with pytest.raises(MedsslError, match="no layer 'layer4'"):
        gradcam_plot(model, images, "layer4", tmp_path / "bad.png")
    with pytest.raises(MedsslError, match="outside the model's 1 outputs"):
        gradcam_plot(model, images, "conv", tmp_path / "bad.png", class_index=1)
    with pytest.raises(MedsslError, match="2 titles for 8 images"):
        gradcam_plot(model, images, "conv", tmp_path / "bad.png", titles=["a", "b"])
