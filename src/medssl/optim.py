"""Optimisers and learning-rate schedules for the training loop: AdamW, LARS, SGD; warm-up then cosine."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from medssl.models.trainable import Trainable
from medssl.schema import bad, check_choice, check_positive

OPTIMIZERS = ("adamw", "lars", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (linear warm-up, then cosine to min_lr_ratio * lr)."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4  # not applied to biases and normalisation parameters
    momentum: float = 0.9  # sgd and lars
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    lars_eta: float = 0.001  # LARS trust coefficient
    warmup_steps: int = 0
    warmup_epochs: float = 0.0  # alternative to warmup_steps; at most one of the two is set
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None  # max global gradient norm; None = no clipping

    def validate(self) -> "OptimConfig":
        """Raise MedsslError naming the first bad value; return self."""
        check_choice("optim.name", self.name, OPTIMIZERS)
        check_choice("optim.schedule", self.schedule, SCHEDULES)
        check_positive(self, "optim", ("lr", "grad_clip", "lars_eta"))
        check_positive(self, "optim", ("weight_decay", "momentum", "warmup_steps", "warmup_epochs", "min_lr_ratio"),
                       allow_zero=True)
        if self.momentum >= 1:
            raise bad("optim.momentum", self.momentum, "must be below 1")
        if self.min_lr_ratio > 1:
            raise bad("optim.min_lr_ratio", self.min_lr_ratio, "must be at most 1")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise bad("optim.betas", self.betas, "must be two numbers in [0, 1)")
        if self.warmup_steps and self.warmup_epochs:
            raise bad("optim.warmup_epochs", self.warmup_epochs, "cannot be set together with optim.warmup_steps")
        return self


def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine", min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at optimiser step `step` (0-based): linear warm-up to 1, then cosine to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (LARS, You et al. 2017; SimCLR's optimiser, Chen et al. 2020).

    update = lr * eta * ||w|| / ||g + wd w|| * (g + wd w), accumulated with momentum. Groups with lars=False
    (biases and normalisation parameters) get plain momentum SGD: no adaptation, no weight decay.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["lars"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm, 1.0)
                    d = d.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def make_optimizer(model: Trainable, optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW, LARS or SGD; weight decay (and LARS adaptation) skip biases and normalisation parameters (ndim < 2).

    Parameters under a prefix of the model's `lr_scales()` get lr * scale; unscaled groups come first, so
    param_groups[0] (the logged lr) has the base lr. Without scales: two groups, as always (resume-compatible).
    """
    scales: dict[str, float] = model.lr_scales()
    by_scale: dict[float, tuple[list[Tensor], list[Tensor]]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = next((v for k, v in scales.items() if name == k or name.startswith(k + ".")), 1.0)
            by_scale.setdefault(float(scale), ([], []))[p.ndim < 2].append(p)
    groups = []
    for scale in sorted(by_scale or {1.0: ([], [])}, key=lambda v: v != 1.0):
        decay, rest = by_scale.get(scale, ([], []))
        lr = {"lr": optim.lr * scale, "lr_scale": scale}
        groups += [{"params": decay, "weight_decay": optim.weight_decay, **lr},
                   {"params": rest, "weight_decay": 0.0, "lars": False, **lr}]
    if optim.name == "lars":
        return LARS(groups, lr=optim.lr, momentum=optim.momentum, eta=optim.lars_eta)
    for g in groups:
        g.pop("lars", None)
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas))  # type: ignore[arg-type]
