"""Checkpoints: atomic writes, clear errors for bad files, RNG round trip, tolerant init, backbone export."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from medssl import checkpoint
from medssl.checkpoint import atomic_save, load_checkpoint, load_weights, rng_state, save_checkpoint, set_rng_state
from medssl.config import load_config
from medssl.errors import MedsslError
from medssl.export import export
from medssl.inference import load_bundle
from medssl.methods import build_model
from medssl.pretrain import run_spec


def test_atomic_save_leaves_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)

    def broken_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        atomic_save({"step": 2}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]   # no temporary file left behind
    assert torch.load(path)["step"] == 1


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(MedsslError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    good = save_checkpoint(tmp_path / "good.pt", model=nn.Linear(3, 2), step=4)
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(MedsslError, match=r"cut\.pt: not a readable checkpoint \(truncated or corrupt\?\)"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(MedsslError, match=r"text\.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(MedsslError, match=r"list\.pt: not a medssl checkpoint"):
        load_checkpoint(tmp_path / "list.pt")
    ckpt = load_checkpoint(good)
    assert ckpt["step"] == 4 and set(ckpt["model"]) == {"weight", "bias"}
    assert load_checkpoint(tmp_path / "good.pt")["version"]


def test_rng_states_round_trip():
    state = rng_state()
    draws = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(state)
    assert (random.random(), np.random.rand()) == draws[:2] and torch.equal(torch.rand(1), draws[2])


def test_load_weights_is_tolerant_and_reports():
    src = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    dst = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5), nn.Linear(5, 1))
    report = load_weights(dst, src.state_dict())
    assert report["loaded"] == ["0.bias", "0.weight"]
    assert report["mismatched"] == ["1.bias", "1.weight"] and "2.weight" in report["missing"]
    assert torch.equal(dst[0].weight, src[0].weight)


@pytest.fixture(scope="module")
def simclr_ckpt(tmp_path_factory):
    """A pretraining checkpoint of a tiny SimCLR (not trained: export only needs weights, spec and preprocess)."""
    cfg = load_config(None, ["data.size=16", "data.batch_size=8", "model.stem=cifar", "train.epochs=1"])
    model = build_model(cfg.model_spec())
    for p in model.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    save_checkpoint(path, model=model, step=3, extra=run_spec(cfg, "test images").record)  # what pretraining records
    return path, model.backbone.eval()


def _x():
    return torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def test_export_torchscript_gives_the_same_features(simclr_ckpt, tmp_path):
    path, backbone = simclr_ckpt
    out = export(path, "torchscript", tmp_path / "backbone.pt")
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(out))(_x()), backbone(_x()), atol=1e-5)


def test_export_safetensors_holds_the_backbone_alone(simclr_ckpt, tmp_path):
    pytest.importorskip("safetensors")
    from safetensors import safe_open
    from safetensors.torch import load_file

    from medssl.models.factory import ModelSpec, build_backbone

    path, backbone = simclr_ckpt
    out = export(path, "safetensors", tmp_path / "backbone.safetensors")
    state = load_file(str(out))
    assert set(state) == set(backbone.state_dict())               # no projection head
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    spec = ModelSpec.from_dict(json.loads(meta["spec"]))         # enough to rebuild the module
    assert (spec.backbone, spec.stem, spec.in_channels, spec.image_size) == ("resnet18", "cifar", 1, 16)
    assert spec.method is None and json.loads(meta["preprocess"]) == {"size": 16, "channels": 1}
    rebuilt = build_backbone(spec)
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(_x()), backbone(_x()), atol=1e-6)


def test_export_onnx_gives_the_same_features(simclr_ckpt, tmp_path):
    pytest.importorskip("onnx")
    path, backbone = simclr_ckpt
    out = export(path, "onnx", tmp_path / "backbone.onnx")
    assert out.stat().st_size > 100_000
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (features,) = session.run(None, {"image": _x().numpy()})      # a batch of 3 through a batch-2 export
    with torch.no_grad():
        assert np.allclose(features, backbone(_x()).numpy(), atol=1e-4)


def test_export_refuses_unknown_format_and_foreign_checkpoints(simclr_ckpt, tmp_path):
    with pytest.raises(MedsslError, match="export format 'pickle'"):
        export(simclr_ckpt[0], "pickle", tmp_path / "x")
    save_checkpoint(tmp_path / "other.pt", model=nn.Linear(2, 2), extra={"config": {"method": "nope"}})
    with pytest.raises(MedsslError, match=r"other\.pt: holds no model spec and preprocess"):
        export(tmp_path / "other.pt", "torchscript", tmp_path / "x.pt")


def test_a_pretraining_checkpoint_loads_as_a_backbone_bundle(simclr_ckpt):
    path, backbone = simclr_ckpt
    ckpt = load_checkpoint(path)
    assert set(ckpt) >= {"config", "spec", "preprocess", "trained_on"} and ckpt["config"]["method"] == "simclr"
    bundle = load_bundle(path)                                  # the backbone, built from the stored spec alone
    assert not bundle.is_classifier and bundle.spec.method == "simclr" and bundle.preprocess.size == 16
    assert bundle.meta["step"] == 3 and not bundle.model.training
    with torch.no_grad():
        assert torch.equal(bundle.model(_x()), backbone(_x()))
