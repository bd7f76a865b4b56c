"""Trained models for use: `load_bundle(path) -> Bundle(model, spec, preprocess, task)` and `predict`.

A bundle is any medssl checkpoint that carries a model spec and a preprocess: a pretraining run's (the model is
then its backbone, giving features) or a classifier that `medssl evaluate` kept (backbone + linear head, with its
task: class names and kind). Loading imports no training code, no Lightning Fabric and no method: the backbone
and the classifier are built from the stored spec by medssl.models.factory. This is what `medssl predict` and
the web service call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medssl import __version__
from medssl.checkpoint import atomic_save, load_checkpoint, resolve_checkpoint
from medssl.data.preprocess import Preprocess, Source
from medssl.data.tasks import Task, task_probabilities
from medssl.errors import MedsslError
from medssl.models.classifier import Classifier
from medssl.models.factory import ModelSpec, build_backbone, build_classifier

BACKBONE_PREFIX = "backbone."


@dataclass
class Bundle:
    """A loaded model ready for inference (eval mode, CPU): what it is, how to feed it, what its outputs mean."""

    model: nn.Module  # a backbone (images -> features) or a Classifier (images -> logits)
    spec: ModelSpec
    preprocess: Preprocess
    task: Task | None  # None: a pretrained backbone, which has no classes
    meta: dict[str, Any] = field(default_factory=dict)  # what the file says of itself (method, data, metrics, ...)

    @property
    def is_classifier(self) -> bool:
        """Whether the model gives class probabilities (else features)."""
        return self.task is not None


def _spec_and_preprocess(ckpt: dict[str, Any], path: Path) -> tuple[ModelSpec, Preprocess]:
    if not isinstance(ckpt.get("spec"), dict) or not isinstance(ckpt.get("preprocess"), dict):
        raise MedsslError(f"{path}: holds no model spec and preprocess (written by an older medssl?); "
                          "retrain or re-evaluate it with this version")
    try:
        return ModelSpec.from_dict(ckpt["spec"]), Preprocess.from_dict(ckpt["preprocess"])
    except (KeyError, TypeError, ValueError) as e:
        raise MedsslError(f"{path}: its model spec or preprocess is unreadable: {e}") from None


def _load_state(module: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise MedsslError(f"{path}: weights do not fit the stored model spec: {str(e).splitlines()[0][:300]}") from None


def load_bundle(path: str | os.PathLike) -> Bundle:
    """A run folder, checkpoint or bundle file -> Bundle (eval mode, on CPU); MedsslError for anything else."""
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path)
    spec, preprocess = _spec_and_preprocess(ckpt, path)
    state = ckpt["model"]
    task = Task.from_dict(ckpt["task"]) if ckpt.get("task") is not None else None
    if task is not None:
        model: nn.Module = build_classifier(spec.bare(), task)
        _load_state(model, state, path)
    else:
        model = build_backbone(spec)
        own = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
        _load_state(model, own or state, path)  # a bare backbone's state has no prefix
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "rng", "validation")}
    return Bundle(model.eval(), spec, preprocess, task, meta)


def save_bundle(path: str | os.PathLike, model: Classifier, spec: ModelSpec, preprocess: Preprocess,
                meta: dict[str, Any] | None = None) -> Path:
    """Write a classifier as a bundle file (atomically): weights, spec, preprocess, task and meta."""
    return atomic_save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                        "spec": spec.bare().to_dict(), "preprocess": preprocess.to_dict(),
                        "task": model.task.to_dict(), "version": __version__, **dict(meta or {})}, path)


@torch.no_grad()
def predict_logits(model: nn.Module, images: Tensor, preprocess: Preprocess, batch_size: int = 256) -> np.ndarray:
    """Classifier logits (N, K) of stored images (N, 1 or C, S, S), uint8 or float in [0, 1]; eval mode, restored."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = [model.logits(x).float().cpu() for x in preprocess.batches(images, batch_size, device)]
    finally:
        model.train(was_training)
    k = model.task.n_outputs
    return torch.cat(out).numpy() if out else np.zeros((0, k), dtype=np.float32)


def class_probabilities(bundle: Bundle, sources: Sequence[Source], batch_size: int = 64) -> np.ndarray:
    """Probabilities (N, C) of every class of the bundle's task (binary: both classes), one row per image."""
    if bundle.task is None:
        raise MedsslError("this bundle is a pretrained backbone: it gives features, not classes; predict with a "
                          "classifier bundle that `medssl evaluate` wrote (RUN/evaluate/bundles/*.pt)")
    images = torch.stack([bundle.preprocess.decode(s) for s in sources]) if sources else torch.zeros(0, 1, 1, 1)
    p = task_probabilities(predict_logits(bundle.model, images, bundle.preprocess, batch_size), bundle.task)
    return np.concatenate([1 - p, p], axis=1) if bundle.task.kind == "binary" else p


def predict(bundle: Bundle, sources: Sequence[Source], batch_size: int = 64) -> list[dict[str, Any]]:
    """One result per image: {"image", "probabilities": {class: p}, "predicted"} (multi-label: every p >= 0.5)."""
    probs = class_probabilities(bundle, sources, batch_size)
    assert bundle.task is not None
    names, out = bundle.task.classes, []
    for src, row in zip(sources, probs):
        chosen = ([n for n, p in zip(names, row) if p >= 0.5] if bundle.task.kind == "multilabel"
                  else [names[int(np.argmax(row))]])
        out.append({"image": str(getattr(src, "path", src)), "probabilities": {n: float(p) for n, p in zip(names, row)},
                    "predicted": chosen})
    return out
