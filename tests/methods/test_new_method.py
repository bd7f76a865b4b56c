"""A method defined here, in the test file, trains through `medssl pretrain`'s code path with no change under src/.

The proof that methods own their knowledge: options, batch declaration and builder sit beside the class, the data
layer builds batches from the declaration, config validation asks the method.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from medssl import methods
from medssl.config import load_config
from medssl.data.datasets import BatchSpec
from medssl.errors import MedsslError
from medssl.inference import load_bundle
from medssl.models.factory import ModelSpec, build_backbone
from medssl.models.trainable import Trainable
from medssl.pretrain import run_pretrain
from medssl.schema import check_positive

THREE_VIEWS = BatchSpec(("a", "b", "c"), min_per_process=2)  # a layout no built-in method uses


@dataclass
class AgreeOptions:
    """Options of the test method."""

    weight: float = 1.0

    def validate(self) -> None:
        check_positive(self, "model.options", ("weight",))


class Agree(Trainable):
    """Pull three augmented views of each image together (cosine); a toy, but a whole method."""

    Options = AgreeOptions
    batch = THREE_VIEWS

    @classmethod
    def build(cls, spec: ModelSpec) -> "Agree":
        return cls(build_backbone(spec), spec.options.weight)

    def __init__(self, backbone: torch.nn.Module, weight: float):
        super().__init__()
        self.backbone, self.weight = backbone, weight
        self.steps_seen = 0

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        za, zb, zc = (F.normalize(self.backbone(batch[k]), dim=1) for k in ("a", "b", "c"))  # (B, D) each
        loss = self.weight * (2 - (za * zb).sum(1).mean() - (za * zc).sum(1).mean())
        return {"loss": loss, "views": torch.tensor(float(len(batch) - 1))}  # keys a, b, c + index

    def on_step(self, step: int, total_steps: int) -> None:
        self.steps_seen = step


@pytest.fixture
def agree(monkeypatch):
    monkeypatch.setitem(methods.METHODS, "agree", Agree)


def _config(tmp_path, *extra: str):
    return load_config(None, ["method=agree", "model.backbone=resnet18", "model.stem=cifar", "data.size=16",
                              "data.synthetic_patients=8", "data.batch_size=8", "data.num_workers=0",
                              "train.steps=3", "train.log_every=1", "model.options.weight=0.5", *extra])


def test_a_method_defined_in_a_test_trains_through_pretrain(tmp_path, agree):
    cfg = _config(tmp_path)
    assert isinstance(cfg.model.options, AgreeOptions) and cfg.model.options.weight == 0.5
    metrics = run_pretrain(cfg, tmp_path / "run", progress=False)
    assert metrics["steps"] == 3 and metrics["method"] == "agree"
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(rows) == 4 and "views" in rows[0]
    assert all(float(r.split(",")[rows[0].split(",").index("views")]) == 3.0 for r in rows[1:])  # a, b, c built
    bundle = load_bundle(tmp_path / "run")                      # its backbone loads like any method's
    assert bundle.spec.method == "agree" and bundle.model(torch.rand(2, 1, 16, 16)).shape == (2, 512)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["final_loss"] >= 0


def test_config_validation_asks_the_method(tmp_path, agree):
    with pytest.raises(MedsslError, match=r"model\.options\.wieght.*did you mean 'weight'"):
        _config(tmp_path, "model.options.wieght=2")
    with pytest.raises(MedsslError, match=r"model\.options\.weight=-1.0 must be positive"):
        _config(tmp_path, "model.options.weight=-1")
    with pytest.raises(MedsslError, match=r"needs at least 2 images per process"):  # from the batch declaration
        _config(tmp_path, "data.batch_size=1")
