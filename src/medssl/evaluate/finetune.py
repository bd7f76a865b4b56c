"""End-to-end fine-tuning: backbone + linear head trained through `train.fit` with the modality's augmentations,
early-stopped on validation macro ROC-AUC; the returned model holds the weights of the best validation step.

The same function is the supervised baseline when given a freshly initialised backbone (`create_backbone`):
nothing here assumes pretraining (give that baseline backbone_lr_scale=1: a random backbone has nothing to keep).
Where the validation split has a single class the AUC is undefined; the run then stops on the negative validation
loss instead, and reports best_val_auc as NaN with val_metric "neg_loss".
"""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.checkpoint import drop_checkpoints
from medssl.config import OptimConfig, TrainConfig
from medssl.data.augment import preset
from medssl.data.datasets import BatchDataset, EpochLoader, ImageDataset
from medssl.errors import MedsslError
from medssl.evaluate.features import image_batches, input_channels
from medssl.evaluate.probe import auc_defined, macro_auc, task_scores
from medssl.evaluate.tasks import Task
from medssl.train import Validation, fit


class Classifier(nn.Module):
    """Backbone + linear head. forward(batch with "image" (B, C, H, W), "target" task-shaped) -> {"loss", "logits"}:
    binary-cross-entropy on logits (B,) (binary) or (B, K) (multi-label), cross-entropy on (B, K) (multi-class)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, task: Task, backbone_lr_scale: float = 1.0,
                 freeze_bn: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, task.n_outputs)
        self.task = task
        self.lr_scales = {"backbone": backbone_lr_scale}  # read by optim.make_optimizer
        self.freeze_bn = freeze_bn

    def train(self, mode: bool = True) -> "Classifier":
        """nn.Module.train; with freeze_bn the backbone's BatchNorm layers stay in eval mode (running statistics
        used and never updated; their scale and shift still learn)."""
        super().train(mode)
        if self.freeze_bn and mode:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def logits(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B,) for binary, (B, K) otherwise."""
        z = self.head(self.backbone(images))                    # (B, n_outputs)
        return z[:, 0] if self.task.kind == "binary" else z

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """The task's loss on logits from `logits` and targets in the task's shape."""
        if self.task.kind == "multiclass":
            return F.cross_entropy(logits, target.long())
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss and logits of a labelled batch."""
        logits = self.logits(batch["image"])
        return {"loss": self.loss(logits, batch["target"]), "logits": logits}

    @torch.no_grad()
    def predict_logits(self, images: Tensor, batch_size: int = 256, size: int | None = None) -> np.ndarray:
        """Logits (N, n_outputs) of images (N, C, S, S), uint8 or float in [0, 1]; eval mode, mode restored."""
        was_training = self.training
        self.eval()
        try:
            device = self.head.weight.device
            out = [self.head(self.backbone(x)).float().cpu()
                   for x in image_batches(images, batch_size, input_channels(self.backbone), size, device)]
        finally:
            self.train(was_training)
        return torch.cat(out).numpy() if out else np.zeros((0, self.task.n_outputs), dtype=np.float32)

    def predict_scores(self, images: Tensor, batch_size: int = 256, size: int | None = None) -> np.ndarray:
        """Probabilities in the task's shape (see medssl.evaluate.tasks)."""
        return task_scores(self.predict_logits(images, batch_size, size), self.task)


@dataclass
class FinetuneConfig:
    """Fine-tuning budget and settings; the pretrained backbone and the scratch baseline get the same budget."""

    steps: int = 300
    batch_size: int = 64  # capped at the number of training images (a 1 % fraction may hold fewer)
    lr: float = 1e-3  # AdamW, linear warm-up then cosine
    weight_decay: float = 1e-4
    warmup_steps: int = 10
    backbone_lr_scale: float = 0.1  # backbone lr = lr * scale: keeps pretrained features; use 1.0 from scratch
    # keep the backbone's BatchNorm running statistics (the pretrained ones) fixed while fine-tuning: a linear
    # probe's head was fitted on features under them, and small labelled batches' statistics shift those features.
    # On PneumoniaMNIST at 10 % labels it raised the best validation AUC in 2 of 3 seeds (the third kept its probe).
    # Never for a random backbone: its statistics are meaningless.
    freeze_bn: bool = False
    augment: str = "chest_xray"  # preset of medssl.data.augment
    size: int | None = None  # side of the augmented images; None = the stored images' side
    eval_every: int = 25  # steps between validation scores
    patience: int | None = 6  # scores without improvement before stopping; None = run all steps
    seed: int = 0
    num_workers: int = 0
    keep_checkpoints: bool = False  # fit writes run_dir/checkpoints/{last,best}.pt; deleted at the end unless set


@dataclass
class FinetuneRun:
    """What fit is given (and saves in checkpoints): the settings and the optimiser and training configs from them."""

    finetune: FinetuneConfig
    optim: OptimConfig
    train: TrainConfig


def _run_config(cfg: FinetuneConfig) -> FinetuneRun:
    """Check the settings; build fit's configs (one process, full precision, a checkpoint only at the end)."""
    for name in ("steps", "batch_size", "eval_every"):
        if getattr(cfg, name) < 1:
            raise MedsslError(f"finetune: {name}={getattr(cfg, name)} must be positive")
    if cfg.patience is not None and cfg.patience < 1:
        raise MedsslError(f"finetune: patience={cfg.patience} must be positive or None")
    if not (cfg.lr > 0 and cfg.backbone_lr_scale >= 0):
        raise MedsslError(f"finetune: lr={cfg.lr} must be positive, backbone_lr_scale={cfg.backbone_lr_scale} >= 0")
    optim = OptimConfig(name="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay,
                        warmup_steps=min(cfg.warmup_steps, cfg.steps))
    train = TrainConfig(steps=cfg.steps, epochs=None, seed=cfg.seed, log_every=cfg.eval_every,
                        checkpoint_every=cfg.steps)
    return FinetuneRun(cfg, optim, train)


def _image_dataset(images: Tensor) -> ImageDataset:
    """An ImageDataset (grayscale, uint8) of (N, C, S, S) uint8 or float images whose channels are equal."""
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise MedsslError(f"expected square images (N, C, S, S), got shape {tuple(images.shape)}")
    if images.shape[1] > 1 and not bool((images == images[:, :1]).all()):
        raise MedsslError("fine-tuning works on grayscale images (channels repeated); these channels differ")
    x = images[:, 0].float()
    return ImageDataset.from_array(x / 255 if images.dtype == torch.uint8 else x)  # from_array rounds back exactly


def _set_head(linear: nn.Linear, weight: np.ndarray, bias: np.ndarray) -> None:
    """Copy weight (K, D) and bias (K,) into the head; raise MedsslError when the shapes differ."""
    w, b = np.asarray(weight), np.asarray(bias)
    if w.shape != tuple(linear.weight.shape) or b.shape != tuple(linear.bias.shape):
        raise MedsslError(f"head weights {w.shape} / {b.shape} do not fit the head {tuple(linear.weight.shape)}")
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(w, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(b, dtype=linear.bias.dtype))


def _val_score(model: Classifier, images: Tensor, y: np.ndarray, size: int) -> float:
    """Validation macro ROC-AUC; the negative validation loss where the AUC is undefined (a single class)."""
    logits = model.predict_logits(images, size=size)           # (N, n_outputs)
    if auc_defined(y, model.task):
        return macro_auc(y, task_scores(logits, model.task), model.task)
    z = torch.from_numpy(logits)
    return -float(model.loss(z[:, 0] if model.task.kind == "binary" else z, torch.as_tensor(y)))


def finetune(backbone: nn.Module, feature_dim: int, train_images: Tensor, y_train: np.ndarray, val_images: Tensor,
             y_val: np.ndarray, task: Task, cfg: FinetuneConfig, run_dir: str | Path, progress: bool = False,
             head: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Classifier, dict[str, Any]]:
    """Fine-tune a COPY of the backbone with a new linear head; return the best-validation model (eval mode) and
    its history {best_step, best_val_auc, best_val, val_metric, steps, stopped_early, val_curve, seconds}.

    head: starting weights (K, D) and bias (K,) of the head, acting on the backbone's pooled features - a linear
    probe's (ProbeResult.weight, .bias): LP-FT (Kumar et al. 2022), which distorts pretrained features less than
    a random head whose large early gradients flow into the backbone. The starting model is then scored at step 0,
    so the result is never worse on validation than the probe it started from. None: a seeded random head.
    """
    t0 = time.perf_counter()
    run = _run_config(cfg)
    images = _image_dataset(train_images)
    y_train, y_val = np.asarray(y_train), np.asarray(y_val)
    if len(y_train) != len(images) or len(y_val) != len(val_images):
        raise MedsslError(f"{len(y_train)} / {len(y_val)} targets for {len(images)} / {len(val_images)} images")
    if len(images) < 2 or len(val_images) < 1:
        raise MedsslError(f"fine-tuning needs 2+ training and 1+ validation images, got {len(images)} and "
                          f"{len(val_images)}")
    size = cfg.size or images.size
    augment, channels = preset(cfg.augment, size), input_channels(backbone)
    batch_size = min(cfg.batch_size, len(images))
    with torch.random.fork_rng(devices=[]):                    # the head's initialisation is the seed's, not chance's
        torch.manual_seed(cfg.seed)
        model = Classifier(copy.deepcopy(backbone).requires_grad_(True), feature_dim, task, cfg.backbone_lr_scale,
                           cfg.freeze_bn)
    if head is not None:
        _set_head(model.head, *head)

    def make_loader(rank: int, world_size: int) -> EpochLoader:
        return EpochLoader(BatchDataset(images, batch_size, ("image",), augment, seed=cfg.seed, rank=rank,
                                        world_size=world_size, channels=channels, targets=y_train), cfg.num_workers)

    score = functools.partial(_val_score, images=val_images, y=y_val, size=size)
    metrics = fit(model, make_loader, run, run_dir, progress=progress,
                  validation=Validation(score, cfg.eval_every, cfg.patience, at_start=head is not None))
    if not cfg.keep_checkpoints:
        drop_checkpoints(run_dir)
    best = metrics["best_val"] if math.isfinite(metrics["best_val"]) else math.nan  # -inf: no score was a number
    on_auc = auc_defined(y_val, task)
    history = {"best_step": metrics["best_step"], "best_val_auc": best if on_auc else math.nan,
               "best_val": best, "val_metric": "auc" if on_auc else "neg_loss",
               "steps": metrics["steps"], "stopped_early": metrics["stopped_early"],
               "val_curve": [(int(s), float(v)) for s, v in metrics["val_curve"]],
               "seconds": time.perf_counter() - t0}
    return model.eval(), history
