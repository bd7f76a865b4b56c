"""End-to-end fine-tuning: backbone + linear head (models.Classifier) trained through `train.fit` with the
modality's augmentations, early-stopped on validation macro ROC-AUC; the returned model holds the weights of the
best validation step.

The same function is the supervised baseline when given a freshly initialised backbone (models.build_backbone):
nothing here assumes pretraining (give that baseline backbone_lr_scale=1: a random backbone has nothing to keep).
Where the validation split has a single class the AUC is undefined; the run then stops on the negative validation
loss instead, and reports best_val_auc as NaN with val_metric "neg_loss".
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medssl.data.augment import preset
from medssl.data.datasets import LABELLED_IMAGE, BatchDataset, EpochLoader, ImageDataset
from medssl.data.preprocess import Preprocess
from medssl.data.tasks import Task, task_probabilities
from medssl.errors import MedsslError
from medssl.evaluate.probe import auc_defined, macro_auc
from medssl.inference import predict_logits
from medssl.models.classifier import Classifier
from medssl.optim import OptimConfig
from medssl.runspec import RunSpec, TrainConfig, Validation
from medssl.train import fit


@dataclass
class FinetuneConfig:
    """Fine-tuning budget and settings; the pretrained backbone and the scratch baseline get the same budget."""

    steps: int | None = 300
    epochs: int | None = None  # instead of steps: passes over the labelled subset
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
    val_every: int = 25  # steps between validation scores
    patience: int | None = 6  # scores without improvement before stopping; None = run all steps
    seed: int = 0
    num_workers: int = 0
    keep_checkpoints: bool = False  # fit writes run_dir/checkpoints/{last,best}.pt; removed at the end unless set

    def validate(self) -> "FinetuneConfig":
        """Raise MedsslError naming the first bad value; return self."""
        if (self.steps is None) == (self.epochs is None):
            raise MedsslError(f"finetune: set exactly one of steps ({self.steps}) and epochs ({self.epochs})")
        for name in ("steps", "epochs", "batch_size", "val_every", "patience"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise MedsslError(f"finetune: {name}={v} must be positive")
        if not (self.lr > 0 and self.backbone_lr_scale >= 0):
            raise MedsslError(f"finetune: lr={self.lr} must be positive, backbone_lr_scale={self.backbone_lr_scale} "
                              ">= 0")
        return self


def _run_spec(cfg: FinetuneConfig, validation: Validation, label: str) -> RunSpec:
    """fit's RunSpec: one process, full precision, a checkpoint only at the end, validation as given."""
    optim = OptimConfig(name="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay,
                        warmup_steps=min(cfg.warmup_steps, cfg.steps or cfg.warmup_steps))
    train = TrainConfig(steps=cfg.steps, epochs=cfg.epochs, seed=cfg.seed, log_every=cfg.val_every,
                        checkpoint_every=10**9)
    return RunSpec(train.validate(), optim.validate(), validation, cfg.keep_checkpoints,
                   record={"finetune": dataclasses.asdict(cfg)}, label=label, transient=True)


def _image_dataset(images: Tensor) -> ImageDataset:
    """An ImageDataset (grayscale, uint8) of (N, C, S, S) uint8 or float images whose channels are equal."""
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise MedsslError(f"expected square images (N, C, S, S), got shape {tuple(images.shape)}")
    if images.shape[1] > 1 and not bool((images == images[:, :1]).all()):
        raise MedsslError("fine-tuning works on grayscale images (channels repeated); these channels differ")
    x = images[:, 0].float()
    return ImageDataset.from_array(x / 255 if images.dtype == torch.uint8 else x)  # from_array rounds back exactly


def _val_score(model: Classifier, images: Tensor, y: np.ndarray, preprocess: Preprocess) -> float:
    """Validation macro ROC-AUC; the negative validation loss where the AUC is undefined (a single class)."""
    logits = predict_logits(model, images, preprocess)          # (N, K)
    if auc_defined(y, model.task):
        return macro_auc(y, task_probabilities(logits, model.task), model.task)
    return -float(model.loss(torch.from_numpy(logits), torch.as_tensor(y)))


def finetune(backbone: nn.Module, train_images: Tensor, y_train: np.ndarray, val_images: Tensor,
             y_val: np.ndarray, task: Task, cfg: FinetuneConfig, run_dir: str | Path, progress: bool = False,
             head: tuple[np.ndarray, np.ndarray] | None = None, preprocess: Preprocess | None = None,
             desc: str = "fine-tune") -> tuple[Classifier, dict[str, Any]]:
    """Fine-tune a COPY of the backbone with a new linear head; return the best-validation Classifier (eval mode)
    and its history {best_step, best_val_auc, best_val, val_metric, steps, stopped_early, val_curve, seconds}.

    head: starting weights (K, D) and bias (K,) of the head, acting on the backbone's pooled features - a linear
    probe's (ProbeResult.weight, .bias): LP-FT (Kumar et al. 2022), which distorts pretrained features less than
    a random head whose large early gradients flow into the backbone. The starting model is then scored at step 0,
    so the result is never worse on validation than the probe it started from. None: a seeded random head.
    preprocess: the model input (size, channels); default: the stored images' side, one channel.
    progress: a transient bar of the optimiser steps (rate, ETA) named `desc`.
    """
    t0 = time.perf_counter()
    cfg.validate()
    images = _image_dataset(train_images)
    y_train, y_val = np.asarray(y_train), np.asarray(y_val)
    if len(y_train) != len(images) or len(y_val) != len(val_images):
        raise MedsslError(f"{len(y_train)} / {len(y_val)} targets for {len(images)} / {len(val_images)} images")
    if len(images) < 2 or len(val_images) < 1:
        raise MedsslError(f"fine-tuning needs 2+ training and 1+ validation images, got {len(images)} and "
                          f"{len(val_images)}")
    preprocess = preprocess or Preprocess(images.size, 1)
    augment = preset(cfg.augment, preprocess.size)
    batch_size = min(cfg.batch_size, len(images))
    with torch.random.fork_rng(devices=[]):                    # the head's initialisation is the seed's, not chance's
        torch.manual_seed(cfg.seed)
        model = Classifier(copy.deepcopy(backbone).requires_grad_(True), task, cfg.backbone_lr_scale, cfg.freeze_bn)
    if head is not None:
        model.head.load(*head)

    def make_loader(rank: int, world_size: int) -> EpochLoader:
        return EpochLoader(BatchDataset(images, batch_size, LABELLED_IMAGE, augment, seed=cfg.seed, rank=rank,
                                        world_size=world_size, channels=preprocess.channels, targets=y_train),
                           cfg.num_workers)

    score = functools.partial(_val_score, model, images=val_images, y=y_val, preprocess=preprocess)
    validation = Validation(lambda _: score(), cfg.val_every, cfg.patience, at_start=head is not None)
    metrics = fit(model, make_loader, _run_spec(cfg, validation, desc), run_dir, progress=progress)
    best = metrics["best_val"] if math.isfinite(metrics["best_val"]) else math.nan  # -inf: no score was a number
    on_auc = auc_defined(y_val, task)
    history = {"best_step": metrics["best_step"], "best_val_auc": best if on_auc else math.nan,
               "best_val": best, "val_metric": "auc" if on_auc else "neg_loss",
               "steps": metrics["steps"], "stopped_early": metrics["stopped_early"],
               "val_curve": [(int(s), float(v)) for s, v in metrics["val_curve"]],
               "seconds": time.perf_counter() - t0}
    return model.eval(), history
