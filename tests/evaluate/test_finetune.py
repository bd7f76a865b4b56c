"""End-to-end fine-tuning through train.fit: learning, early stopping on validation AUC, best weights, all tasks."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import TinyNet
from medssl.checkpoint import load_checkpoint
from medssl.data.datasets import LABELLED_IMAGE
from medssl.data.preprocess import Preprocess
from medssl.data.tasks import Task, task_probabilities
from medssl.errors import MedsslError
from medssl.evaluate.finetune import FinetuneConfig, finetune
from medssl.evaluate.probe import backbone_fingerprint, macro_auc, sanity_check
from medssl.inference import predict_logits
from medssl.models.backbones import create_backbone
from medssl.models.classifier import Classifier
from medssl.optim import OptimConfig, make_optimizer
from medssl.runspec import RunSpec, TrainConfig, Validation
from medssl.train import fit

BINARY = Task("binary", ("normal", "pneumonia"))
MULTICLASS = Task("multiclass", ("dark", "grey", "bright"))
MULTILABEL = Task("multilabel", ("bright", "square"), "no_finding")
FAST = FinetuneConfig(steps=40, batch_size=16, lr=1e-2, warmup_steps=2, backbone_lr_scale=1.0, val_every=5,
                      patience=None)


def scores_of(model: Classifier, images: torch.Tensor) -> np.ndarray:
    """The classifier's probabilities (N, K) of stored images, at their own side, one channel."""
    return task_probabilities(predict_logits(model, images, Preprocess(int(images.shape[-1]), 1)), model.task)

def _images(level: np.ndarray, seed: int, square: np.ndarray | None = None) -> torch.Tensor:
    """16 px uint8 images of mean `level` with pixel noise; a bright 6 px square in the corner where square == 1."""
    rng = np.random.default_rng(seed)
    x = level[:, None, None] + rng.normal(0, 0.15, (len(level), 16, 16))
    if square is not None:
        x[square == 1, 2:8, 2:8] = 1.0
    return torch.from_numpy((np.clip(x, 0, 1) * 255).round().astype(np.uint8))[:, None]


def bright_dark(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """The easy binary task: positives are brighter (0.65 against 0.35)."""
    y = np.arange(n) % 2
    return _images(np.where(y == 1, 0.65, 0.35), seed), y


def test_finetune_learns_an_easy_binary_task_and_leaves_the_backbone_alone(tmp_path):
    (xt, yt), (xv, yv) = bright_dark(64, 0), bright_dark(32, 1)
    backbone = TinyNet()
    fingerprint = backbone_fingerprint(backbone)
    model, h = finetune(backbone, xt, yt, xv, yv, BINARY, FAST, tmp_path)
    assert h["best_val_auc"] > 0.9 and h["val_metric"] == "auc"
    assert h["steps"] == 40 and not h["stopped_early"]
    assert [s for s, _ in h["val_curve"]] == list(range(5, 41, 5))
    assert dict(h["val_curve"])[h["best_step"]] == h["best_val_auc"] == max(v for _, v in h["val_curve"])
    scores = scores_of(model, xv)
    assert scores.shape == (32, 1) and not model.training
    assert macro_auc(yv, scores, BINARY) == h["best_val_auc"]  # the returned weights are the best step's
    sanity_check(backbone, fingerprint)                         # a copy was fine-tuned
    assert not (tmp_path / "checkpoints").exists() and (tmp_path / "log.csv").is_file()


def test_early_stopping_returns_the_best_weights(tmp_path):
    (xt, yt), (xv, yv) = bright_dark(64, 0), bright_dark(32, 1)
    cfg = replace(FAST, steps=300, val_every=2, patience=3, keep_checkpoints=True)
    model, h = finetune(TinyNet(), xt, yt, xv, yv, BINARY, cfg, tmp_path)
    # stops at the third score after the best, none of which was better
    assert h["stopped_early"] and h["steps"] == h["best_step"] + 3 * 2 < 300
    assert len(h["val_curve"]) == h["steps"] // 2 and all(v <= h["best_val_auc"] for _, v in h["val_curve"])
    best, last = load_checkpoint(tmp_path / "checkpoints" / "best.pt"), load_checkpoint(tmp_path)
    assert best["step"] == h["best_step"] and last["step"] == h["steps"]
    state = model.state_dict()
    assert all(torch.equal(state[k], best["model"][k]) for k in state)
    assert any(not torch.equal(state[k], last["model"][k]) for k in state)  # training went on after the best
    assert macro_auc(yv, scores_of(model, xv), BINARY) == h["best_val_auc"]


def test_multiclass_and_multilabel_targets(tmp_path):
    y3 = np.arange(30) % 3
    x3 = _images(np.array([0.2, 0.5, 0.8])[y3], 0)
    cfg = replace(FAST, steps=4, val_every=2)
    model, h = finetune(TinyNet(), x3[:18], y3[:18], x3[18:], y3[18:], MULTICLASS, cfg, tmp_path / "mc")
    p = scores_of(model, x3[18:])
    assert p.shape == (12, 3) and np.allclose(p.sum(1), 1) and math.isfinite(h["best_val_auc"])
    ym = np.stack([np.arange(30) % 2, (np.arange(30) // 2) % 2], axis=1)
    xm = _images(np.where(ym[:, 0] == 1, 0.6, 0.3), 1, square=ym[:, 1])
    model, h = finetune(TinyNet(), xm[:18], ym[:18], xm[18:], ym[18:], MULTILABEL, cfg, tmp_path / "ml")
    p = scores_of(model, xm[18:])
    assert p.shape == (12, 2) and ((p > 0) & (p < 1)).all() and math.isfinite(h["best_val_auc"])


def test_scratch_resnet18_backbone(tmp_path):
    backbone, dim = create_backbone("resnet18", 1, 16, stem="small")
    (xt, yt), (xv, yv) = bright_dark(16, 0), bright_dark(8, 1)
    assert backbone.feature_dim == dim
    cfg = FinetuneConfig(steps=3, batch_size=8, val_every=3, patience=2, backbone_lr_scale=1.0)
    model, h = finetune(backbone, xt, yt, xv, yv, BINARY, cfg, tmp_path)
    assert h["steps"] == 3 and h["best_step"] == 3 and 0 <= h["best_val_auc"] <= 1
    assert scores_of(model, xv).shape == (8, 1)


def test_single_class_validation_stops_on_the_negative_loss(tmp_path):
    (xt, yt), (xv, yv) = bright_dark(32, 0), bright_dark(16, 1)
    keep = yv == 1
    model, h = finetune(TinyNet(), xt, yt, xv[keep], yv[keep], BINARY, replace(FAST, steps=6, val_every=3),
                        tmp_path)
    assert h["val_metric"] == "neg_loss" and math.isnan(h["best_val_auc"])
    p = scores_of(model, xv[keep])                          # all positives: BCE = mean(-log p)
    assert h["best_val"] == pytest.approx(float(np.mean(np.log(p))), abs=1e-5)


def test_backbone_gets_the_scaled_learning_rate():
    model = Classifier(TinyNet(), BINARY, backbone_lr_scale=0.1)
    groups = make_optimizer(model, OptimConfig(lr=0.01)).param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.01, 0.001, 0.001])
    head = {id(p) for p in model.head.parameters()}
    assert {id(p) for g in groups[:2] for p in g["params"]} == head   # head first: the logged lr is the base lr
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def _run(steps: int, validation: Validation) -> RunSpec:
    return RunSpec(TrainConfig(steps=steps, epochs=None, log_every=2, checkpoint_every=4),
                   OptimConfig(lr=0.01, schedule="constant"), validation)


def test_validation_state_survives_resume(tmp_path):
    from medssl.data.augment import preset
    from medssl.data.datasets import BatchDataset, EpochLoader, ImageDataset

    x, y = bright_dark(32, 0)
    images = ImageDataset.from_array(x[:, 0].float() / 255)
    loader = lambda r, w: EpochLoader(BatchDataset(images, 8, LABELLED_IMAGE, preset("none", 16), targets=y))  # noqa
    scores = iter([0.5, 0.9, 0.7, 0.6, 0.8, 0.1])              # one per evaluation (steps 2, 4, ..., 12)
    validation = Validation(lambda m: next(scores), every=2)
    first = fit(Classifier(TinyNet(), BINARY, backbone_lr_scale=0.1), loader, _run(6, validation), tmp_path,
                progress=False)
    assert (first["best_step"], first["best_val"]) == (4, 0.9)
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["step"] == 4
    model = Classifier(TinyNet(), BINARY, backbone_lr_scale=0.1)
    again = fit(model, loader, _run(12, validation), tmp_path, resume=True, progress=False)
    assert [s for s, _ in again["val_curve"]] == [2, 4, 6, 8, 10, 12]
    assert (again["best_step"], again["best_val"]) == (4, 0.9)  # nothing better after the resume
    # the step-4 weights came back from best.pt, not the resumed run's last weights
    assert all(torch.equal(v, best["model"][k]) for k, v in model.state_dict().items())
    groups = load_checkpoint(tmp_path)["optimizer"]["param_groups"]  # a resume keeps the backbone's lower lr
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.01, 0.001, 0.001])


def test_validation_at_start_can_keep_the_starting_weights(tmp_path):
    from medssl.data.augment import preset
    from medssl.data.datasets import BatchDataset, EpochLoader, ImageDataset

    x, y = bright_dark(32, 0)
    images = ImageDataset.from_array(x[:, 0].float() / 255)
    loader = lambda r, w: EpochLoader(BatchDataset(images, 8, LABELLED_IMAGE, preset("none", 16), targets=y))  # noqa
    model = Classifier(TinyNet(), BINARY)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    scores = iter([0.9, 0.5, 0.6, 0.7])                         # steps 0, 2, 4, 6: training never beats the start
    m = fit(model, loader, _run(6, Validation(lambda _: next(scores), every=2, at_start=True)), tmp_path,
            progress=False)
    assert [s for s, _ in m["val_curve"]] == [0, 2, 4, 6] and (m["best_step"], m["best_val"]) == (0, 0.9)
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())   # the starting weights came back


def test_head_from_a_linear_probe_starts_at_the_probe_and_never_ends_below_it(tmp_path):
    from medssl.evaluate.features import extract_features
    from medssl.evaluate.probe import linear_probe

    (xt, yt), (xv, yv) = bright_dark(24, 0), bright_dark(32, 1)
    backbone = TinyNet()
    ft, fv = extract_features(backbone, xt), extract_features(backbone, xv)
    probe = linear_probe(ft, yt, fv, yv, fv, BINARY)
    cfg = replace(FAST, steps=10, backbone_lr_scale=0.1)
    model, h = finetune(backbone, xt, yt, xv, yv, BINARY, cfg, tmp_path, head=(probe.weight, probe.bias))
    step0, probe_auc = h["val_curve"][0], macro_auc(yv, probe.val_scores, BINARY)
    assert step0[0] == 0 and step0[1] == pytest.approx(probe_auc, abs=1e-6)   # step 0 is the probe, in float32
    assert h["best_val_auc"] >= step0[1]
    with pytest.raises(MedsslError, match="do not fit the head"):
        finetune(backbone, xt, yt, xv, yv, BINARY, cfg, tmp_path, head=(probe.weight.T, probe.bias))


def test_freeze_bn_keeps_the_backbone_statistics_and_still_learns(tmp_path):
    (xt, yt), (xv, yv) = bright_dark(64, 0), bright_dark(32, 1)
    backbone = TinyNet()
    stats = {k: v.clone() for k, v in backbone.state_dict().items() if "running" in k}
    model, h = finetune(backbone, xt, yt, xv, yv, BINARY, replace(FAST, freeze_bn=True), tmp_path)
    after = model.backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in stats.items())   # running mean / var never moved
    bn = model.backbone.net[1]
    assert not torch.equal(bn.weight, backbone.net[1].weight)        # its scale still learned
    model.train()
    assert model.training and not bn.training                        # train() leaves BatchNorm in eval mode
    assert h["best_val_auc"] > 0.9
